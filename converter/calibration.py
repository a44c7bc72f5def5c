"""The int8 calibration images: drawn with a seed from the training images only, and scaled by
`edge_runtime.preprocess.scale_pixels`, the function the trainer feeds the network with, so the
same seed always gives the same images (and the same int8 file).
"""

from __future__ import annotations

import logging

import numpy as np

from converter.source_model import IMAGE_INPUT_RANK, RGB_CHANNELS
from edge_runtime.errors import DataError
from edge_runtime.preprocess import DEFAULT_SPEC, PreprocessSpec, scale_pixels

logger = logging.getLogger(__name__)

DEFAULT_CALIBRATION_SIZE = 500


def check_calibration_size(size: int) -> None:
    """Refuse an empty calibration set before any data is loaded."""
    if size <= 0:
        raise DataError(f"empty calibration set: the calibration size is {size}; "
                        "int8 needs at least one training image")


def calibration_indices(num_train: int, size: int, seed: int) -> np.ndarray:
    """Indices of the training images used for calibration: `size` distinct ones drawn with `seed`.

    Fewer when there are fewer training images. Sorted, so the calibration order does not depend
    on how numpy's sampler orders its draw.
    """
    check_calibration_size(size)
    if num_train <= 0:
        raise DataError("empty calibration set: the data set has no training images")
    count = min(size, num_train)
    if count < size:
        logger.info("calibration size %d is more than the %d training images; using all of them", size, num_train)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_train, size=count, replace=False))


def calibration_batch(train_images: np.ndarray, size: int, seed: int,
                      spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """The calibration images as the network sees them: float32 [n, height, width, 3].

    Only `train_images` is ever passed here; the test set has no way in.
    """
    train_images = np.asarray(train_images)
    if train_images.ndim != IMAGE_INPUT_RANK or train_images.shape[1:] != (spec.height, spec.width, RGB_CHANNELS):
        raise DataError(f"training images have shape {list(train_images.shape)}, expected "
                        f"[N, {spec.height}, {spec.width}, {RGB_CHANNELS}]")
    if train_images.dtype != np.uint8:
        raise DataError(f"training images are {train_images.dtype}, expected uint8 pixels")
    indices = calibration_indices(len(train_images), size, seed)
    return scale_pixels(train_images[indices], spec)
