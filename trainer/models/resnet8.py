"""ResNet-8, the network of MLPerf Tiny's image-classification benchmark (78,666 parameters for 10 classes).

A 16-filter 3x3 stem (conv, BN, ReLU), then three residual stacks of 16, 32 and 64 filters: two 3x3
convs with BN (ReLU between them), the second and third stacks starting with stride 2 and adding a
1x1 stride-2 projection of their input; ReLU after each addition. Then average pooling over the
whole 8x8 map (at 32x32 input), flatten and a dense softmax. Every conv is he_normal-initialised
with L2 1e-4 on its kernel, as in the reference (mlcommons/tiny, `resnet_v1_eembc`); the dense
layer is he_normal without L2. Its inputs are raw pixels, 0-255.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import keras

# The MLPerf Tiny reference's parameter count for 10 classes at 32x32; the tests check the built model.
REFERENCE_PARAMETER_COUNT = 78_666
L2_WEIGHT = 1e-4
INITIALIZER = "he_normal"
MODEL_NAME = "resnet8"


def build(num_classes: int, image_size: int) -> "keras.Model":
    """The uncompiled ResNet-8 for square RGB inputs of `image_size` pixels."""
    import keras
    from keras import layers

    def conv(filters: int, kernel: int, strides: int, name: str) -> layers.Conv2D:
        return layers.Conv2D(filters, kernel, strides=strides, padding="same", kernel_initializer=INITIALIZER,
                             kernel_regularizer=keras.regularizers.L2(L2_WEIGHT), name=name)

    inputs = keras.Input(shape=(image_size, image_size, 3), name="pixels")
    x = conv(16, 3, 1, "stem_conv")(inputs)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for stack, (filters, strides) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
        y = conv(filters, 3, strides, f"stack{stack}_conv1")(x)
        y = layers.BatchNormalization(name=f"stack{stack}_bn1")(y)
        y = layers.Activation("relu", name=f"stack{stack}_relu1")(y)
        y = conv(filters, 3, 1, f"stack{stack}_conv2")(y)
        y = layers.BatchNormalization(name=f"stack{stack}_bn2")(y)
        if strides != 1:
            x = conv(filters, 1, strides, f"stack{stack}_projection")(x)
        x = layers.Add(name=f"stack{stack}_add")([x, y])
        x = layers.Activation("relu", name=f"stack{stack}_relu")(x)
    x = layers.AveragePooling2D(pool_size=tuple(x.shape[1:3]), name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(num_classes, activation="softmax", kernel_initializer=INITIALIZER,
                           name="probabilities")(x)
    return keras.Model(inputs, outputs, name=MODEL_NAME)
