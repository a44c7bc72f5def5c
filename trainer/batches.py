"""Training and evaluation batches streamed from decoded uint8 images, with optional augmentation.

Only one batch at a time is ever in float32: the data set stays as uint8 (a quarter of the size),
so 96x96 inputs and above fit in memory. Each epoch's order and augmentation come from the seed
and the epoch number alone, so a resumed run sees the same batches as an uninterrupted one.

Augmentation (random horizontal flip, random shift with reflected borders) is applied here, to
training batches only: it is no part of the model and never reaches the exported files. Rotation
is left out: unlike a flip or a shift it resamples every pixel, which costs more than the rest of
the pipeline on a small CPU.

The fit and evaluation data `train()` hands to Keras come from here too: float32 arrays in memory
(the documented recipe's way) or these batches as a tf.data stream.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from edge_runtime.preprocess import PreprocessSpec, scale_pixels

from .tensorflow_env import import_tensorflow

if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig
    from .dataset import Dataset

# The largest shift, as a fraction of the image side (MLPerf Tiny's reference uses 0.1).
DEFAULT_SHIFT = 0.1
# Salts that keep the order and the augmentation draws of one epoch independent of each other.
ORDER_STREAM = 0
AUGMENT_STREAM = 1


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What happens to each training image: a left-right flip with probability 1/2, a shift by up to
    `shift` of the side in each direction (the border filled by reflection)."""

    flip: bool = True
    shift: float = DEFAULT_SHIFT

    def to_dict(self) -> dict[str, Any]:
        return {"flip": self.flip, "shift": self.shift, "rotation": None}


DEFAULT_AUGMENTATION = Augmentation()


def epoch_order(count: int, seed: int, epoch: int) -> np.ndarray:
    """The order of `count` training images in epoch `epoch` (0-based): a permutation from (seed, epoch)."""
    return np.random.default_rng([seed, epoch, ORDER_STREAM]).permutation(count)


def augment(pixels: np.ndarray, rng: np.random.Generator, augmentation: Augmentation = DEFAULT_AUGMENTATION
            ) -> np.ndarray:
    """Randomly flipped and shifted copies of uint8 images [B, H, W, C], the same shape and dtype."""
    out = np.array(pixels, dtype=np.uint8, copy=True)
    count, height, width = out.shape[:3]
    if augmentation.flip:
        flipped = rng.random(count) < 0.5
        out[flipped] = out[flipped, :, ::-1]
    pad_y = min(int(round(augmentation.shift * height)), height - 1)
    pad_x = min(int(round(augmentation.shift * width)), width - 1)
    if pad_y or pad_x:
        padded = np.pad(out, ((0, 0), (pad_y, pad_y), (pad_x, pad_x), (0, 0)), mode="reflect")
        tops = rng.integers(0, 2 * pad_y + 1, size=count)
        lefts = rng.integers(0, 2 * pad_x + 1, size=count)
        for index, (top, left) in enumerate(zip(tops, lefts)):
            out[index] = padded[index, top:top + height, left:left + width]
    return out


def steps_per_epoch(count: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Batches in one pass over `count` images (the last one may be smaller, or is left out)."""
    return count // batch_size if drop_remainder else math.ceil(count / batch_size)


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class indices to float32 one-hot rows (what categorical cross-entropy takes)."""
    return np.eye(num_classes, dtype=np.float32)[labels]


def training_batches(images: np.ndarray, labels: np.ndarray, index: np.ndarray, num_classes: int,
                     spec: PreprocessSpec, batch_size: int, seed: int, first_epoch: int = 0,
                     end_epoch: int | None = None, augmentation: Augmentation | None = None,
                     drop_remainder: bool = False) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(float32 inputs, one-hot targets) for epochs first_epoch..end_epoch-1 over `images[index]`.

    `images` is the whole uint8 array; `index` picks the training images, so no copy of the split is
    made. `end_epoch` None goes on for ever (Keras takes `steps_per_epoch` batches for each epoch).
    `drop_remainder` leaves out each epoch's last partial batch (a different few images every epoch):
    under tf.distribute a device handed no image would make the step's gradients NaN.
    """
    for epoch in itertools.count(first_epoch) if end_epoch is None else range(first_epoch, end_epoch):
        order = index[epoch_order(len(index), seed, epoch)]
        if drop_remainder:
            order = order[:len(order) - len(order) % batch_size]
        rng = np.random.default_rng([seed, epoch, AUGMENT_STREAM])
        for start in range(0, len(order), batch_size):
            chosen = order[start:start + batch_size]
            pixels = images[chosen]
            if augmentation is not None:
                pixels = augment(pixels, rng, augmentation)
            yield scale_pixels(pixels, spec), one_hot(labels[chosen], num_classes)


def evaluation_batches(images: np.ndarray, labels: np.ndarray, index: np.ndarray | None, num_classes: int,
                       spec: PreprocessSpec, batch_size: int, replicas: int = 1) -> Iterator[tuple[np.ndarray, ...]]:
    """(float32 inputs, one-hot targets) for `images[index]` (all images when None), in order.

    With `replicas` > 1 (tf.distribute), every batch is padded to a multiple of `replicas` with
    copies of its last image, and a third array of sample weights (1, and 0 for the copies) comes
    with it: each device then gets images, and the copies count for nothing in the accuracy.
    """
    positions = np.arange(len(images)) if index is None else index
    for start in range(0, len(positions), batch_size):
        chosen = positions[start:start + batch_size]
        if replicas == 1:
            yield scale_pixels(images[chosen], spec), one_hot(labels[chosen], num_classes)
            continue
        padding = -len(chosen) % replicas
        weights = np.concatenate([np.ones(len(chosen)), np.zeros(padding)]).astype(np.float32)
        chosen = np.concatenate([chosen, np.repeat(chosen[-1:], padding)])
        yield scale_pixels(images[chosen], spec), one_hot(labels[chosen], num_classes), weights


# Batches the input pipeline prepares ahead of the training step.
PREFETCH_BATCHES = 2


def stream(generate: Any, *args: Any, batches: int | None = None, weighted: bool = False) -> Any:
    """A tf.data pipeline over `generate(*args)`, which yields (float32 inputs, one-hot targets) batches,
    with sample weights as a third array when `weighted`.

    `batches` is how many a finite stream yields: Keras then knows where an evaluation ends.
    """
    tf = import_tensorflow()
    images, num_classes = args[0], args[3]
    signature = (tf.TensorSpec((None, *images.shape[1:]), tf.float32), tf.TensorSpec((None, num_classes), tf.float32))
    if weighted:
        signature += (tf.TensorSpec((None,), tf.float32),)
    dataset = tf.data.Dataset.from_generator(functools.partial(generate, *args), output_signature=signature)
    if batches is not None:
        dataset = dataset.apply(tf.data.experimental.assert_cardinality(batches))
    return dataset.prefetch(PREFETCH_BATCHES)


def evaluation_stream(images: np.ndarray, labels: np.ndarray, index: np.ndarray | None, num_classes: int,
                      spec: PreprocessSpec, batch_size: int, replicas: int) -> Any:
    """Evaluation batches in order, as a stream of known length (padded for the devices when distributed)."""
    count = len(images) if index is None else len(index)
    return stream(evaluation_batches, images, labels, index, num_classes, spec, batch_size, replicas,
                  batches=steps_per_epoch(count, batch_size), weighted=replicas > 1)


def fit_data(dataset: Dataset, index: np.ndarray, config: TrainConfig, spec: PreprocessSpec, streaming: bool,
             evaluation: bool = False, replicas: int = 1) -> Any:
    """The images at `index` as the network takes them: (float32 array, one-hot) in memory, or a stream."""
    if streaming and evaluation:
        return evaluation_stream(dataset.train_images, dataset.train_labels, index, dataset.num_classes, spec,
                                 config.batch_size, replicas)
    # The fancy indexing copies, in shuffled order (the documented recipe's arrays).
    return (scale_pixels(dataset.train_images[index], spec), one_hot(dataset.train_labels[index], dataset.num_classes))


def evaluation_data(dataset: Dataset, config: TrainConfig, spec: PreprocessSpec, streaming: bool,
                    replicas: int = 1) -> Any:
    """The test set as the network takes it: arrays for the documented path, else a stream."""
    if streaming:
        return evaluation_stream(dataset.test_images, dataset.test_labels, None, dataset.num_classes, spec,
                                 config.batch_size, replicas)
    return scale_pixels(dataset.test_images, spec), one_hot(dataset.test_labels, dataset.num_classes)
