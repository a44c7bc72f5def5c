"""Batch-normalization statistics recomputed from the current weights, before validation and saving.

A batch-norm layer trains on each batch's own mean and variance but predicts with moving averages
of them. Those averages lag behind the weights: Keras' MobileNetV2 keeps 99.9% of the old value at
each step, and from scratch its 52 layers change fast. On a 5-class subset of CIFAR-10 (2,000
images, 8 epochs) the lag compounded down the network until inference mode answered one class for
every image (20%), while the same weights on batch statistics were right on about 48%; recomputing
the averages from 500 training images took inference mode to 48.4% (BENCHMARKS.md).

So networks that ask for it (`Arch.recalibrate_batch_norm`) run a fixed sample of un-augmented
training images through the network in training mode after every epoch, with each layer's momentum
set so that its moving mean and variance become the plain averages over those batches. Weights are
unchanged; only the statistics that inference uses are replaced.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from edge_runtime.preprocess import PreprocessSpec, scale_pixels

if TYPE_CHECKING:  # pragma: no cover
    import keras

# Training images whose batch statistics replace the moving ones: enough for stable averages
# (500 fixed the collapse above), few enough to cost a few percent of an epoch on a small data set.
RECALIBRATION_IMAGES = 512


def batch_norm_layers(model: "keras.Model") -> list[Any]:
    """Every BatchNormalization layer of `model`, nested models included, in order."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif hasattr(layer, "layers"):
            found.extend(batch_norm_layers(layer))
    return found


def recalibrate(model: "keras.Model", batches: Iterable[np.ndarray]) -> int:
    """Set each trainable batch-norm layer's moving mean and variance to their averages over `batches`
    (float32 network inputs) run through `model` in training mode; returns how many batches ran.

    Frozen layers (a pretrained backbone kept in inference mode) keep their statistics: Keras updates
    only trainable ones. Each layer's momentum is restored afterwards, also on error.
    """
    layers = batch_norm_layers(model)
    momenta = [layer.momentum for layer in layers]
    count = 0
    try:
        for count, batch in enumerate(batches, start=1):
            # moving = moving * m + batch * (1 - m) with m = (k - 1) / k is the running mean of k batches.
            for layer in layers:
                layer.momentum = (count - 1) / count
            model(batch, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return count


def recalibration_batches(images: np.ndarray, index: np.ndarray, spec: PreprocessSpec, batch_size: int,
                          count: int = RECALIBRATION_IMAGES) -> Iterator[np.ndarray]:
    """Network inputs for the first `count` images of `index` (a shuffled training index), un-augmented,
    in batches of `batch_size`: the same sample every epoch."""
    chosen = index[:count]
    for start in range(0, len(chosen), batch_size):
        yield scale_pixels(images[chosen[start:start + batch_size]], spec)


def recalibration_callback(batches: Callable[[], Iterable[np.ndarray]]) -> "keras.callbacks.Callback":
    """A Keras callback that recalibrates after each epoch's training steps: before fit's validation
    when there is one (so the validation accuracy, and with it the kept epoch, sees the new statistics),
    else at the epoch's end. Put it before the callback that checkpoints, which then saves them."""
    import keras

    class RecalibrateBatchNorm(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.done = False

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.done = False

        def on_test_begin(self, logs: dict | None = None) -> None:
            recalibrate(self.model, batches())
            self.done = True

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if not self.done:
                recalibrate(self.model, batches())
                self.done = True

    return RecalibrateBatchNorm()
