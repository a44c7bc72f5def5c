"""Weight averaging: validate, keep and export an exponential moving average of the weights.

With `Arch.weight_average` set to a decay d, the optimizer keeps, beside each trainable weight w, an
average a <- d * a + (1 - d) * w updated after every step (Keras' `use_ema`; it is optimizer state, so a
checkpoint holds it and a resumed run continues it). While the learning rate is high the average sits
nearer the middle of the valley the steps bounce around in than any one step does: for ResNet-8 it was 2-6
points ahead on validation in the middle of a 26-epoch run, and level at its end, where a cosine schedule
has taken the rate to zero (BENCHMARKS.md, issue 24 part four).

Batch-norm statistics are not trainable weights, and the ones training gathered belong to the raw weights,
so each time the average is used its statistics are recomputed from a fixed sample of un-augmented
training images (`trainer.batch_norm.recalibrate`). The average is used for fit's validation after each
epoch (then the raw weights and their statistics are put back, so training goes on exactly as without
it), and for the kept epoch's model, the test evaluation and `model.keras`. Checkpoints hold the raw
weights with the average in the optimizer's state; `apply_average` turns any of them into the averaged
model the validation figure of its epoch was measured on.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from .batch_norm import recalibrate

if TYPE_CHECKING:  # pragma: no cover
    import keras

# Training images whose batch statistics go with the averaged weights: four times the per-epoch
# recalibration's sample, since here they also decide the exported model (about a second at 32x32).
AVERAGE_RECALIBRATION_IMAGES = 2048


def averaging_optimizer_options(decay: float | None) -> dict[str, Any]:
    """Keyword arguments that make a Keras optimizer keep the average (none when `decay` is None)."""
    return {} if decay is None else {"use_ema": True, "ema_momentum": decay}


def apply_average(model: "keras.Model", batches: Iterable[np.ndarray]) -> int:
    """Replace `model`'s trainable weights with its optimizer's average of them, then recompute its
    batch-norm statistics from `batches`; returns how many batches ran. ValueError when the model's
    optimizer keeps no average (compiled without `weight_average`)."""
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None or not getattr(optimizer, "use_ema", False):
        raise ValueError(f"{model.name}: its optimizer keeps no average of the weights")
    optimizer.finalize_variable_values(model.trainable_variables)
    return recalibrate(model, batches)


def averaged_validation_callback(batches: Callable[[], Iterable[np.ndarray]]) -> "keras.callbacks.Callback":
    """A Keras callback that validates the averaged weights: before fit's validation it stores every
    weight, applies the average and recomputes the statistics; after it, it puts every weight back."""
    import keras

    class ValidateAverage(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.stored: list[np.ndarray] | None = None

        def on_test_begin(self, logs: dict | None = None) -> None:
            self.stored = self.model.get_weights()
            apply_average(self.model, batches())

        def on_test_end(self, logs: dict | None = None) -> None:
            if self.stored is not None:
                self.model.set_weights(self.stored)
                self.stored = None

    return ValidateAverage()
