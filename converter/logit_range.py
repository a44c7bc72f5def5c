"""The int8 model's logit range: quantize the scores over the span that decides the answer.

A full-int8 model carries its pre-softmax scores (logits) in one int8 tensor, 256 steps for all
classes and all images. Plain min/max calibration stretches those steps from the most negative
score of the least likely class to the score of the most confident image: on the recipe's model
that is about -42 to +36, a step of 0.3. Two classes whose logits lie closer than that become a tie
or swap places, and that rounding alone accounts for most of int8's disagreement with Keras.

Most of those steps go to scores that cannot matter: the logits of classes far below the winner.
For the calibration images (training images, never test ones) this module finds the lowest winning
logit. A class more than ln(256) below it has under 1/256 of the winner's probability, less than
one step of the int8 output, so the range starts there and ends, as before, at the highest logit
calibration saw. The int8 graph computes softmax(clip(logits, low, high)), which makes the
converter quantize the logits over [low, high]: about -6.5 to +36 on the recipe's model, a step of
0.17 instead of 0.30. Scores outside saturate, which the int8 kernels do anyway.

The top is left where calibration put it. Clipping there too (at the highest runner-up logit plus
ln 256) gave a finer step still, but on held-out training images it turned some confident answers
into ties: two classes above the bound both saturate and come out at 0.5 each.

Float32, float16 and dynamic models keep the Keras graph unchanged. The bounds are rounded outwards
to 1/8 so that last-bit differences in another machine's float arithmetic give the same model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# A class this far below the winner (in logits) has under 1/256 of its probability: one int8 step.
OUTPUT_STEP_MARGIN = math.log(256)
# Bounds are rounded outwards to this grid, so float noise across machines gives the same model.
BOUND_GRID = 8
PREDICT_BATCH = 256
SOFTMAX_NAME = "softmax"


@dataclass(frozen=True)
class LogitRange:
    """The interval the int8 model quantizes its logits over, and how it was found."""

    low: float
    high: float
    lowest_winner: float
    images: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description (stored in the manifest and in the model's metadata)."""
        return {
            "low": self.low,
            "high": self.high,
            "lowest_winning_logit": round(self.lowest_winner, 4),
            "calibration_images": self.images,
            "rule": "[lowest winning logit - ln 256, highest logit] over the calibration images",
        }


def softmax_head(model: Any) -> Any | None:
    """The model's last layer if it is a Dense layer with a softmax activation, else None."""
    head = model.layers[-1] if getattr(model, "layers", None) else None
    if head is None or not hasattr(head, "kernel") or not hasattr(head, "activation"):
        return None
    if getattr(head.activation, "__name__", "") != SOFTMAX_NAME or not getattr(head, "use_bias", False):
        return None
    return head


def logit_range(logits: np.ndarray) -> LogitRange:
    """The decision-relevant range of `logits` ([images, classes], at least two classes)."""
    logits = np.asarray(logits, dtype=np.float64)
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] < 2:
        raise ValueError(f"logit range needs [images, classes>=2] logits, got shape {list(logits.shape)}")
    ranked = np.sort(logits, axis=1)
    lowest_winner = float(ranked[:, -1].min())
    low = math.floor((lowest_winner - OUTPUT_STEP_MARGIN) * BOUND_GRID) / BOUND_GRID
    high = math.ceil(float(ranked[:, -1].max()) * BOUND_GRID) / BOUND_GRID
    return LogitRange(low=low, high=high, lowest_winner=lowest_winner, images=int(logits.shape[0]))


def calibration_logits(model: Any, calibration: np.ndarray) -> np.ndarray:
    """The Keras model's pre-softmax scores for the calibration images."""
    import keras

    head = softmax_head(model)
    if head is None:
        raise ValueError("the model does not end in a Dense softmax layer")
    features = keras.Model(model.inputs, head.input)
    hidden = np.asarray(features.predict(calibration, batch_size=PREDICT_BATCH, verbose=0), dtype=np.float64)
    kernel = np.asarray(head.kernel.numpy(), dtype=np.float64)
    bias = np.asarray(head.bias.numpy(), dtype=np.float64)
    return hidden @ kernel + bias
