"""Learnable synthetic images for tests: each class has its own colour and stripe direction.

A tiny CNN reaches well above chance on these in a few epochs, so parity and accuracy tests
measure a model that has learned something, without network access or ../shared.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASS_NAMES = ("circle", "cross", "stripes", "waves")
IMAGE_SIZE = 32
BASE_COLOURS = ((220, 60, 50), (60, 190, 70), (50, 80, 210), (200, 190, 60))
NOISE_STD = 18.0


def synthetic_image(class_index: int, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """One uint8 RGB image of class `class_index`: a coloured pattern with random phase and noise."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phase = rng.uniform(0, 2 * np.pi)
    frequency = rng.uniform(3.0, 5.0)
    kind = class_index % 4
    if kind == 0:
        radius = np.hypot(x - rng.uniform(0.35, 0.65), y - rng.uniform(0.35, 0.65))
        pattern = (radius < rng.uniform(0.2, 0.35)).astype(np.float32)
    elif kind == 1:
        pattern = ((np.abs(x - 0.5) < 0.12) | (np.abs(y - 0.5) < 0.12)).astype(np.float32)
    elif kind == 2:
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * x + phase)
    else:
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * frequency * (x + y) + phase)
    colour = np.array(BASE_COLOURS[class_index % len(BASE_COLOURS)], dtype=np.float32)
    image = 30 + pattern[..., None] * colour[None, None, :]
    image += rng.normal(0, NOISE_STD, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def synthetic_arrays(per_class: int, seed: int = 0, num_classes: int = len(CLASS_NAMES),
                     size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, size, size, 3], labels int [N]) with `per_class` images of each class."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    images = np.stack([synthetic_image(int(label), rng, size) for label in labels])
    return images, labels


def write_image_folder(root: Path, per_class: int, seed: int = 0, fmt: str = "png",
                       class_names: tuple[str, ...] = CLASS_NAMES) -> Path:
    """Write `root/<class>/NNNN.<fmt>` for each class; returns root."""
    images, labels = synthetic_arrays(per_class, seed=seed, num_classes=len(class_names))
    counters = {name: 0 for name in class_names}
    for image, label in zip(images, labels):
        name = class_names[int(label)]
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(folder / f"{counters[name]:04d}.{fmt}")
        counters[name] += 1
    return root


def write_split_dataset(root: Path, train_per_class: int = 60, test_per_class: int = 20,
                        fmt: str = "png") -> Path:
    """Write `root/train/<class>/...` and `root/test/<class>/...` with different seeds."""
    write_image_folder(root / "train", train_per_class, seed=1, fmt=fmt)
    write_image_folder(root / "test", test_per_class, seed=2, fmt=fmt)
    return root
