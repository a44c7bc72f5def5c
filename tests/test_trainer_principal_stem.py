"""The stem started from the principal directions of image patches (trainer.principal_stem)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_runtime.preprocess import PreprocessSpec, scale_pixels
from trainer.principal_stem import (FILTER_NORM, PATCH_IMAGES, patch_matrix, principal_kernel,
                                    start_from_principal_patches)

RAW = PreprocessSpec(scale=1.0, offset=0.0)


def test_patches_are_flattened_in_the_order_of_a_keras_kernel() -> None:
    inputs = np.arange(2 * 4 * 5 * 3, dtype=np.float64).reshape(2, 4, 5, 3)
    patches = patch_matrix(inputs, 3)
    assert patches.shape == (2 * 2 * 3, 27)
    # The patch of image 1 whose top-left corner is at row 1, column 2, against a kernel [row, column, channel].
    np.testing.assert_array_equal(patches[1 * 6 + 1 * 3 + 2], inputs[1, 1:4, 2:5, :].reshape(-1))


def test_flat_images_give_the_brightness_direction_first() -> None:
    # Each image one shade of grey plus faint noise: nearly all patch variance lies along "all pixels together".
    rng = np.random.default_rng(0)
    inputs = rng.uniform(0, 255, size=(64, 1, 1, 1)) + rng.normal(0, 1, size=(64, 8, 8, 3))
    kernel = principal_kernel(inputs, 3, 16)
    assert kernel.shape == (3, 3, 3, 16) and kernel.dtype == np.float32
    first = kernel[..., 0].reshape(-1)
    assert abs(abs(first @ np.ones(27)) / (np.linalg.norm(first) * math.sqrt(27)) - 1) < 1e-3


def test_filters_come_in_opposite_pairs_of_equal_norm_by_falling_variance() -> None:
    rng = np.random.default_rng(1)
    inputs = rng.normal(size=(40, 10, 10, 3)) * np.array([5.0, 1.0, 0.2])  # channels of unequal spread
    inputs = inputs + np.roll(inputs, 1, axis=2)  # neighbours correlated
    kernel = principal_kernel(inputs, 3, 16).reshape(27, 16)
    np.testing.assert_allclose(kernel[:, 8:], -kernel[:, :8])
    np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), FILTER_NORM, rtol=1e-5)
    # Against an independent computation: the right singular vectors of the centred patch matrix.
    patches = patch_matrix(inputs, 3)
    _, _, vectors = np.linalg.svd(patches - patches.mean(axis=0), full_matrices=False)
    for column in range(8):
        assert abs(abs(vectors[column] @ kernel[:, column]) / FILTER_NORM - 1) < 1e-4
    spread = np.var(patches @ kernel[:, :8], axis=0)
    assert all(np.diff(spread) <= 1e-9 * spread[0])


def test_an_odd_filter_count_and_too_many_filters() -> None:
    inputs = np.random.default_rng(2).normal(size=(8, 6, 6, 3))
    assert principal_kernel(inputs, 3, 5).shape == (3, 3, 3, 5)
    with pytest.raises(ValueError, match="16 filters need 8 patch directions; 1x1x3 patches have 3"):
        principal_kernel(inputs, 1, 16)


def test_the_stem_of_a_network_is_set_from_a_seeded_sample() -> None:
    from trainer.models import get_arch

    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(PATCH_IMAGES + 50, 32, 32, 3), dtype=np.uint8)
    index = np.arange(20, len(images))
    model = get_arch("resnet8").build(10, 32)
    stem = model.get_layer("stem_conv")
    stem.bias.assign(np.ones(16, dtype=np.float32))
    before = stem.kernel.numpy().copy()
    assert start_from_principal_patches(model, "stem_conv", images, index, RAW, seed=5) == PATCH_IMAGES
    kernel = stem.kernel.numpy()
    assert not np.allclose(kernel, before)
    np.testing.assert_array_equal(stem.bias.numpy(), np.zeros(16, dtype=np.float32))
    # The same sample from the same seed: the kernel is principal_kernel of those images' network inputs.
    sample = np.sort(np.random.default_rng(5).choice(index, size=PATCH_IMAGES, replace=False))
    np.testing.assert_allclose(kernel, principal_kernel(scale_pixels(images[sample], RAW), 3, 16), rtol=1e-6)
    other = get_arch("resnet8").build(10, 32)
    start_from_principal_patches(other, "stem_conv", images, index, RAW, seed=6)
    assert not np.allclose(other.get_layer("stem_conv").kernel.numpy(), kernel)
