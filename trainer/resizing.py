"""Resizing a data set's uint8 arrays to a network's input size (CIFAR-10 comes as 32x32)."""

from __future__ import annotations

import dataclasses

import numpy as np

from edge_runtime.preprocess import PreprocessSpec, array_to_input

from .dataset import Dataset
from .progress import Progress


def resize_dataset(dataset: Dataset, spec: PreprocessSpec, progress: Progress) -> Dataset:
    """The data set with its arrays brought to `spec`'s size (unchanged when they already are).

    CIFAR-10 comes as 32x32 arrays; a network with larger inputs gets them resized by
    `edge_runtime.preprocess.array_to_input`, as a camera frame would be.
    """
    if dataset.train_images.shape[1:3] == (spec.height, spec.width):
        return dataset
    progress.message(f"resizing {dataset.train_count + dataset.test_count:,} images to {spec.width}x{spec.height}")
    return dataclasses.replace(dataset, train_images=resize_images(dataset.train_images, spec),
                               test_images=resize_images(dataset.test_images, spec))


def resize_images(images: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """uint8 images [N, h, w, 3] resized to [N, spec.height, spec.width, 3], one at a time (no float copy)."""
    resized = np.zeros((len(images), spec.height, spec.width, 3), dtype=np.uint8)
    for index, image in enumerate(images):
        resized[index] = array_to_input(image, spec)
    return resized
