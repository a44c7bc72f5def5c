"""Training and evaluation batches streamed from decoded uint8 images, with optional augmentation.

Only one batch at a time is ever in float32: the data set stays as uint8 (a quarter of the size),
so 96x96 inputs and above fit in memory (TensorFlow holds one uint8 copy of the training images
while the streams run). Each epoch's order and augmentation come from the seed, the epoch and the
batch number alone, so a resumed run sees the same batches as an uninterrupted one. All of it runs
as TensorFlow ops inside tf.data, with no Python per batch.

Augmentation (random horizontal flip, random shift with reflected borders) is applied here, to
training batches only: it is no part of the model and never reaches the exported files. Rotation
is left out: unlike a flip or a shift it resamples every pixel, which costs more than the rest of
the pipeline on a small CPU. A flip or a shift moves pixels and never changes a value.

The fit and evaluation data `train()` hands to Keras come from here too: float32 arrays in memory
(the documented recipe's way) or these batches as a tf.data stream.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from edge_runtime.preprocess import PIXEL_SCALE, PreprocessSpec, scale_pixels

from .tensorflow_env import import_tensorflow

if TYPE_CHECKING:  # pragma: no cover
    from .config import TrainConfig
    from .dataset import Dataset

# The largest shift, as a fraction of the image side (MLPerf Tiny's reference uses 0.1).
DEFAULT_SHIFT = 0.1
# Salts that keep the order and the augmentation draws of one epoch independent of each other.
ORDER_STREAM = 0
AUGMENT_STREAM = 1
FLIP_STREAM = 2  # each image's first side, for the alternating flip
RANDOM_FLIP = "random"
ALTERNATING_FLIP = "alternating"
FLIPS = (RANDOM_FLIP, ALTERNATING_FLIP)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """What happens to each training image: a left-right flip, a shift by up to `shift` of the side in
    each direction (the border filled by reflection).

    The flip is `random` (each time with probability 1/2) or `alternating`: each image is seen
    flipped in every other epoch, from a first side drawn once per image from the seed. Over any two
    epochs the network then sees both sides of every image, where a random flip shows half of
    them one side only; the fast CIFAR-10 training literature (airbench's "derandomized" flip) found
    it helps short runs.
    """

    flip: bool = True
    shift: float = DEFAULT_SHIFT
    flip_order: str = RANDOM_FLIP

    def __post_init__(self) -> None:
        if self.flip_order not in FLIPS:
            raise ValueError(f"flip order must be one of {', '.join(FLIPS)}, not {self.flip_order!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"flip": self.flip_order if self.flip else None, "shift": self.shift, "rotation": None}


DEFAULT_AUGMENTATION = Augmentation()


def steps_per_epoch(count: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Batches in one pass over `count` images (the last one may be smaller, or is left out)."""
    return count // batch_size if drop_remainder else math.ceil(count / batch_size)


def one_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Class indices to float32 one-hot rows (what categorical cross-entropy takes)."""
    return np.eye(num_classes, dtype=np.float32)[labels]


def _seed_key(seed: int, *salts: Any) -> Any:
    """A stateless random key from the run's seed and salts (stream, epoch, batch), as tensors or ints."""
    tf = import_tensorflow()
    key = tf.constant([seed, 0], dtype=tf.int64)
    for salt in salts:
        key = tf.random.experimental.stateless_fold_in(key, tf.cast(salt, tf.int64))
    return key


def epoch_permutation(count: int, seed: int, epoch: Any) -> Any:
    """The order of `count` training images in epoch `epoch` (0-based): a permutation from (seed, epoch),
    as an int64 tensor (a stable sort of full-range random integers, so ties cannot reorder it)."""
    tf = import_tensorflow()
    draws = tf.random.stateless_uniform([count], _seed_key(seed, ORDER_STREAM, epoch), minval=None, maxval=None,
                                        dtype=tf.int64)
    return tf.argsort(draws, stable=True)


def augment(pixels: Any, key: Any, augmentation: Augmentation = DEFAULT_AUGMENTATION, flipped: Any = None) -> Any:
    """Randomly flipped and shifted copies of a uint8 batch [B, H, W, C] (a tensor), the same shape and dtype;
    the draws come from the stateless `key`, so the same key gives the same batch. `flipped` (bool [B]),
    when given, says which images to flip instead of a draw (the alternating flip's sides)."""
    tf = import_tensorflow()
    flip_key, top_key, left_key = tf.unstack(tf.random.experimental.stateless_split(key, 3))
    count, height, width = tf.shape(pixels)[0], pixels.shape[1], pixels.shape[2]
    if augmentation.flip:
        if flipped is None:
            flipped = tf.random.stateless_uniform([count], flip_key) < 0.5
        pixels = tf.where(flipped[:, None, None, None], tf.reverse(pixels, [2]), pixels)
    pad_y = min(int(round(augmentation.shift * height)), height - 1)
    pad_x = min(int(round(augmentation.shift * width)), width - 1)
    if pad_y or pad_x:
        padded = tf.pad(pixels, [[0, 0], [pad_y, pad_y], [pad_x, pad_x], [0, 0]], mode="REFLECT")
        tops = tf.random.stateless_uniform([count], top_key, 0, 2 * pad_y + 1, dtype=tf.int32)
        lefts = tf.random.stateless_uniform([count], left_key, 0, 2 * pad_x + 1, dtype=tf.int32)
        # Each image's window of the padded one: rows, then columns, gathered per image.
        rows = tops[:, None] + tf.range(height)[None]
        columns = lefts[:, None] + tf.range(width)[None]
        pixels = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), columns, axis=2, batch_dims=1)
    return pixels


def alternating_sides(image_count: int, seed: int) -> Any:
    """Each image's side in even epochs (bool [image_count]) under the alternating flip: drawn from the
    seed alone, so every epoch and a resumed run agree; odd epochs show the other side."""
    tf = import_tensorflow()
    return tf.random.stateless_uniform([image_count], _seed_key(seed, FLIP_STREAM)) < 0.5


def flipped_in_epoch(sides: Any, picked: Any, epoch: Any) -> Any:
    """Which of the images `picked` (indices into the images) the alternating flip shows flipped in `epoch`."""
    tf = import_tensorflow()
    odd = tf.equal(tf.math.floormod(tf.cast(epoch, tf.int64), 2), 1)
    return tf.not_equal(tf.gather(sides, picked), odd)


def scale_in_graph(pixels: Any, spec: PreprocessSpec) -> Any:
    """edge_runtime.preprocess.scale_pixels inside TensorFlow's graph, to the same float32 bits (the
    tests hold the two equal): x / 255 for the documented spec, else x * scale + offset."""
    tf = import_tensorflow()
    values = tf.cast(pixels, tf.float32)
    if spec.scale == 1.0 / PIXEL_SCALE and spec.offset == 0.0:
        return values / PIXEL_SCALE
    return values * spec.scale + spec.offset


# Batches the input pipeline prepares ahead of the training step.
PREFETCH_BATCHES = 2
# Where a training stream's epochs end: never, in practice (Keras takes `steps_per_epoch` batches of each).
ENDLESS_EPOCHS = 2 ** 62


def training_stream(images: Any, labels: np.ndarray, index: np.ndarray, num_classes: int, spec: PreprocessSpec,
                    batch_size: int, seed: int, first_epoch: int = 0, augmentation: Augmentation | None = None,
                    drop_remainder: bool = False) -> Any:
    """Endless (float32 inputs, one-hot targets) batches for epochs first_epoch, first_epoch + 1, ...
    over `images[index]`, made by TensorFlow's own ops: order, gather, augmentation, scaling, one-hot.

    `images` is the whole uint8 array (or a tensor of it, shared with a validation stream); `index`
    picks the training images. Each epoch's order and each batch's augmentation come from (seed,
    epoch, batch) alone, so a resumed run sees the same batches as an uninterrupted one.
    `drop_remainder` leaves out each epoch's last partial batch (a different few images every epoch):
    under tf.distribute a device handed no image would make the step's gradients NaN.

    No Python runs per batch: a pipeline that called back into Python (tf.data's from_generator) made
    ResNet-8's fit take 2.9-3.1 ms an image against 1.8-1.9 for this one (benchmarks/bench_resnet8_step.py).
    """
    tf = import_tensorflow()
    pixels, classes = as_tensor(images), tf.constant(labels, dtype=tf.int32)
    chosen = tf.constant(index, dtype=tf.int64)
    count = len(index)
    alternating = augmentation is not None and augmentation.flip and augmentation.flip_order == ALTERNATING_FLIP
    sides = alternating_sides(int(pixels.shape[0]), seed) if alternating else None

    plain = tf.autograph.experimental.do_not_convert  # no tensor-dependent Python here: trace it as written

    @plain
    def epoch_batches(epoch: Any) -> Any:
        order = tf.gather(chosen, epoch_permutation(count, seed, epoch))
        batches = tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=drop_remainder)
        return batches.enumerate().map(plain(lambda step, picked: (epoch, step, picked)))

    @plain
    def make_batch(epoch: Any, step: Any, picked: Any) -> Any:
        batch = tf.gather(pixels, picked)
        if augmentation is not None:
            flipped = flipped_in_epoch(sides, picked, epoch) if alternating else None
            batch = augment(batch, _seed_key(seed, AUGMENT_STREAM, epoch, step), augmentation, flipped)
        return scale_in_graph(batch, spec), tf.one_hot(tf.gather(classes, picked), num_classes)

    epochs = tf.data.Dataset.range(first_epoch, ENDLESS_EPOCHS)
    return epochs.flat_map(epoch_batches).map(make_batch).prefetch(PREFETCH_BATCHES)


def evaluation_stream(images: Any, labels: np.ndarray, index: np.ndarray | None, num_classes: int,
                      spec: PreprocessSpec, batch_size: int, replicas: int = 1) -> Any:
    """(float32 inputs, one-hot targets) for `images[index]` (all images when None), in order, never
    augmented, as a stream of known length.

    With `replicas` > 1 (tf.distribute), every batch is padded to a multiple of `replicas` with
    copies of its last image, and a third tensor of sample weights (1, and 0 for the copies) comes
    with it: each device then gets images, and the copies count for nothing in the accuracy.
    """
    tf = import_tensorflow()
    pixels, classes = as_tensor(images), tf.constant(labels, dtype=tf.int32)
    positions = np.arange(len(labels)) if index is None else index

    @tf.autograph.experimental.do_not_convert  # no tensor-dependent Python here: trace it as written
    def make_batch(picked: Any) -> Any:
        if replicas > 1:
            real = tf.shape(picked)[0]
            padding = tf.math.floormod(-real, replicas)
            picked = tf.concat([picked, tf.repeat(picked[-1:], padding)], axis=0)
            weights = tf.concat([tf.ones([real]), tf.zeros([padding])], axis=0)
        inputs = scale_in_graph(tf.gather(pixels, picked), spec)
        targets = tf.one_hot(tf.gather(classes, picked), num_classes)
        return (inputs, targets, weights) if replicas > 1 else (inputs, targets)

    batches = tf.data.Dataset.from_tensor_slices(tf.constant(positions, dtype=tf.int64)).batch(batch_size)
    return batches.map(make_batch).prefetch(PREFETCH_BATCHES)


# TensorFlow reads a tensor's memory only at this alignment (Eigen's widest vectors); a borrowed buffer must meet it.
TENSOR_ALIGNMENT = 64


def as_tensor(images: Any) -> Any:
    """uint8 images as a tensor the pipelines gather from: the numpy array's own memory where TensorFlow can
    borrow it (C-contiguous, writable, 64-byte aligned: e.g. the decoded cache's memory map), else a copy.

    Borrowing keeps a 96x96 data set in one place (a copy would hold it twice, and read all of a memory map at
    once). Convert once and hand the tensor to both the training and the validation stream."""
    tf = import_tensorflow()
    if isinstance(images, tf.Tensor):
        return images
    array = np.asarray(images)
    if array.dtype == np.uint8 and borrowable(array):
        return tf.experimental.dlpack.from_dlpack(array.__dlpack__())
    return tf.convert_to_tensor(array, dtype=tf.uint8)


def borrowable(array: np.ndarray) -> bool:
    """Whether TensorFlow can use `array`'s memory as it is (as_tensor)."""
    return (array.size > 0 and array.flags.c_contiguous and array.flags.writeable
            and array.ctypes.data % TENSOR_ALIGNMENT == 0)


def fit_data(dataset: Dataset, index: np.ndarray, config: TrainConfig, spec: PreprocessSpec, streaming: bool,
             evaluation: bool = False, replicas: int = 1, train_pixels: Any = None) -> Any:
    """The images at `index` as the network takes them: (float32 array, one-hot) in memory, or a stream
    (over `train_pixels`, the training images' tensor, when one was made already)."""
    if streaming and evaluation:
        return evaluation_stream(train_pixels if train_pixels is not None else dataset.train_images,
                                 dataset.train_labels, index, dataset.num_classes, spec, config.batch_size, replicas)
    # The fancy indexing copies, in shuffled order (the documented recipe's arrays).
    return (scale_pixels(dataset.train_images[index], spec), one_hot(dataset.train_labels[index], dataset.num_classes))


def evaluation_data(dataset: Dataset, config: TrainConfig, spec: PreprocessSpec, streaming: bool,
                    replicas: int = 1) -> Any:
    """The test set as the network takes it: arrays for the documented path, else a stream."""
    if streaming:
        return evaluation_stream(dataset.test_images, dataset.test_labels, None, dataset.num_classes, spec,
                                 config.batch_size, replicas)
    return scale_pixels(dataset.test_images, spec), one_hot(dataset.test_labels, dataset.num_classes)
