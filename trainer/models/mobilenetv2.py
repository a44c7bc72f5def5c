"""MobileNetV2 (Keras' own, `keras.applications.MobileNetV2`) with a new classification head.

The backbone is built without its ImageNet top and with global average pooling; one dense softmax
layer scores the classes. Inputs are pixels scaled to [-1, 1] (x / 127.5 - 1), as MobileNetV2's
ImageNet weights expect. `weights` is None (from scratch), "imagenet" (Keras downloads the weights
once) or the path of a backbone weights file. With pretrained weights the backbone's batch
normalization stays in inference mode (the usual transfer-learning setup), so fine-tuning adjusts
the weights without overwriting ImageNet's statistics on a small data set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from edge_runtime.errors import ModelError

if TYPE_CHECKING:  # pragma: no cover
    import keras

IMAGENET = "imagenet"
DEFAULT_ALPHA = 0.35
# The width multipliers Keras publishes ImageNet weights for.
IMAGENET_ALPHAS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
# The layer that `trainer.phases` freezes for the first epochs of a run from pretrained weights.
BACKBONE_NAME = "backbone"
MODEL_NAME = "mobilenetv2"


def build(num_classes: int, image_size: int, alpha: float = DEFAULT_ALPHA,
          weights: str | os.PathLike | None = None) -> "keras.Model":
    """The uncompiled MobileNetV2 classifier; ModelError names the weights when they cannot be loaded."""
    import keras
    from keras import layers

    if weights is not None and str(weights) == IMAGENET and alpha not in IMAGENET_ALPHAS:
        raise ModelError(f"no ImageNet weights for alpha {alpha:g}; "
                         f"Keras has them for {', '.join(f'{a:g}' for a in IMAGENET_ALPHAS)}")
    source = None if weights is None else (IMAGENET if str(weights) == IMAGENET else os.fspath(weights))
    if source not in (None, IMAGENET) and not Path(source).is_file():
        raise ModelError(f"{source}: no such weights file")
    try:
        backbone = keras.applications.MobileNetV2(input_shape=(image_size, image_size, 3), alpha=alpha,
                                                  include_top=False, weights=source, pooling="avg",
                                                  name=BACKBONE_NAME)
    except Exception as error:  # Keras raises ValueError, OSError, URL errors... for weights it cannot use
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if source == IMAGENET:
            raise ModelError(f"cannot get MobileNetV2's ImageNet weights through Keras ({reason}); "
                             f"without the internet, pass --weights PATH with a local copy") from error
        raise ModelError(f"{source}: cannot load it as MobileNetV2 (alpha {alpha:g}) backbone weights "
                         f"({reason})") from error
    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    features = backbone(inputs, training=False) if source is not None else backbone(inputs)
    outputs = layers.Dense(num_classes, activation="softmax", name="probabilities")(features)
    return keras.Model(inputs, outputs, name=MODEL_NAME)
