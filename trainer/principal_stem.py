"""The first convolution started from the principal directions of the training images' patches.

The fast CIFAR-10 training literature (Page's "How to train your ResNet", Jordan's airbench) starts the
first convolution as a whitening filter bank: the leading eigenvectors of the covariance of the image
patches it sees, in pairs of opposite sign (a ReLU later keeps one half of each direction). Where batch
normalization follows that convolution, as in ResNet-8, each filter's output is divided by its own
spread, so the whitening's per-direction scale changes nothing the network computes: only the
directions matter. Each filter is therefore given the mean norm of a he_normal filter, sqrt(2), so the
stem trains at the pace a random start would. The architecture is unchanged; only where the stem's
kernel starts differs. Patches are read as the network takes its inputs
(`edge_runtime.preprocess.scale_pixels`), from a fixed sample of training images drawn from the seed.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from edge_runtime.preprocess import PreprocessSpec, scale_pixels

if TYPE_CHECKING:  # pragma: no cover
    import keras

# Training images whose patches estimate the covariance (about 900 patches each at 32x32 with a 3x3
# kernel: far more than a 27x27 covariance needs).
PATCH_IMAGES = 1024
# The expected norm of a he_normal filter: fan_in draws of variance 2 / fan_in.
FILTER_NORM = math.sqrt(2.0)


def patch_matrix(inputs: np.ndarray, kernel: int) -> np.ndarray:
    """Every `kernel` x `kernel` patch of float inputs [N, H, W, C] as rows [N*(H-k+1)*(W-k+1), k*k*C],
    each flattened in the (row, column, channel) order of a Keras Conv2D kernel."""
    windows = np.lib.stride_tricks.sliding_window_view(inputs, (kernel, kernel), axis=(1, 2))
    # windows: [N, H', W', C, k, k] -> [N, H', W', k, k, C]
    return windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, kernel * kernel * inputs.shape[3])


def principal_kernel(inputs: np.ndarray, kernel: int, filters: int, norm: float = FILTER_NORM) -> np.ndarray:
    """A Conv2D kernel [k, k, C, filters] from float inputs [N, H, W, C]: the patch covariance's leading
    ceil(filters / 2) eigenvectors (largest variance first), then the same ones negated, cut to `filters`,
    each of norm `norm`. ValueError when the patches have fewer directions than half the filters."""
    patches = patch_matrix(inputs.astype(np.float64), kernel)
    directions = patches.shape[1]
    pairs = (filters + 1) // 2
    if pairs > directions:
        raise ValueError(f"{filters} filters need {pairs} patch directions; {kernel}x{kernel}x{inputs.shape[3]} "
                         f"patches have {directions}")
    mean = patches.mean(axis=0)
    covariance = patches.T @ patches / len(patches) - np.outer(mean, mean)
    _, vectors = np.linalg.eigh(covariance)  # ascending eigenvalues, unit eigenvectors
    leading = vectors[:, ::-1][:, :pairs] * norm
    bank = np.concatenate([leading, -leading], axis=1)[:, :filters]
    return bank.reshape(kernel, kernel, inputs.shape[3], filters).astype(np.float32)


def start_from_principal_patches(model: "keras.Model", layer_name: str, images: np.ndarray, index: np.ndarray,
                                 spec: PreprocessSpec, seed: int) -> int:
    """Set the kernel of `model`'s Conv2D `layer_name` to `principal_kernel` of up to PATCH_IMAGES of the
    uint8 `images[index]` (a sample drawn from `seed`) and its bias to zero; returns the images used."""
    layer = model.get_layer(layer_name)
    kernel_height, kernel_width, _, filters = layer.kernel.shape
    if kernel_height != kernel_width:
        raise ValueError(f"{layer_name}: a square kernel is needed, not {kernel_height}x{kernel_width}")
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(index, size=min(PATCH_IMAGES, len(index)), replace=False))
    layer.kernel.assign(principal_kernel(scale_pixels(images[sample], spec), kernel_height, filters))
    if layer.bias is not None:
        layer.bias.assign(np.zeros(layer.bias.shape, dtype=np.float32))
    return len(sample)
