"""The documented network: a small Sequential CNN for 32x32 RGB images.

Conv2D(32) -> MaxPool -> Conv2D(64) -> MaxPool -> Conv2D(64) -> Flatten -> Dense(64) -> Dense(classes),
3x3 kernels with "same" padding and ReLU, softmax output; Adam with its defaults, categorical
cross-entropy, accuracy. Inputs are pixels scaled to [0, 1] (`edge_runtime.preprocess.scale_pixels`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover - for type checkers only; TensorFlow is imported lazily
    import keras

DEFAULT_NUM_CLASSES = 10
DEFAULT_INPUT_SHAPE = (32, 32, 3)
# The recipe's parameter count for 10 classes; the architecture test checks the built model against it.
RECIPE_PARAMETER_COUNT = 319_178
KERNEL_SIZE = (3, 3)
POOL_SIZE = (2, 2)
FIRST_CONV_FILTERS = 32
CONV_FILTERS = 64
DENSE_UNITS = 64
LOSS = "categorical_crossentropy"
METRICS = ("accuracy",)
MODEL_NAME = "cifar_cnn"


def build_model(num_classes: int = DEFAULT_NUM_CLASSES,
                input_shape: tuple[int, int, int] = DEFAULT_INPUT_SHAPE) -> "keras.Model":
    """Build and compile the documented CNN (319,178 parameters for 10 classes on 32x32x3 input)."""
    if num_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, not {num_classes}")
    import keras  # lazy: `edge-train --help` must not import TensorFlow
    from keras import layers

    model = keras.Sequential(
        [
            keras.Input(shape=tuple(input_shape), name="pixels"),
            layers.Conv2D(FIRST_CONV_FILTERS, KERNEL_SIZE, activation="relu", padding="same", name="conv1"),
            layers.MaxPooling2D(POOL_SIZE, name="pool1"),
            layers.Conv2D(CONV_FILTERS, KERNEL_SIZE, activation="relu", padding="same", name="conv2"),
            layers.MaxPooling2D(POOL_SIZE, name="pool2"),
            layers.Conv2D(CONV_FILTERS, KERNEL_SIZE, activation="relu", padding="same", name="conv3"),
            layers.Flatten(name="flatten"),
            layers.Dense(DENSE_UNITS, activation="relu", name="dense"),
            layers.Dense(num_classes, activation="softmax", name="probabilities"),
        ],
        name=MODEL_NAME,
    )
    compile_model(model)
    return model


def build(num_classes: int, image_size: int) -> "keras.Model":
    """The registry's entry (`trainer.models`): the documented CNN for square `image_size` inputs."""
    return build_model(num_classes, (image_size, image_size, 3))


def compile_model(model: "keras.Model") -> None:
    """Compile with the recipe's optimizer, loss and metric (Adam with Keras' default settings)."""
    import keras

    model.compile(optimizer=keras.optimizers.Adam(), loss=LOSS, metrics=list(METRICS))
