"""The Dataset type: a data set in memory as uint8 images and int64 class indices, split into train and test.

Every source in `trainer.sources` returns one; `load_dataset` there is how to get one.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import numpy as np

DEFAULT_SEED = 0
# Share of each class held out as the test set when a single class-folder tree is given.
DEFAULT_TEST_FRACTION = 0.2
TRAIN_FOLDER = "train"
TEST_FOLDER = "test"
SPLITS = (TRAIN_FOLDER, TEST_FOLDER)
# `load_dataset(pick=...)`: (split name, image count) -> sorted indices of the images to keep.
Picker = Callable[[str, int], np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A data set in memory: uint8 images [N, height, width, 3] and int64 class indices [N].

    `train_paths` / `test_paths` list the image files in array order (None for archives);
    `skipped` holds (path, reason) for every file that could not be read.
    """

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: list[str]
    source: str
    train_paths: list[str] | None = None
    test_paths: list[str] | None = None
    skipped: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    loaded_splits: tuple[str, ...] = SPLITS  # a split not named here was not read (its arrays are empty)
    # With `load_dataset(pick=...)`: how many images each picked split had before the pick (else None).
    train_available: int | None = None
    test_available: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_count(self) -> int:
        return int(len(self.train_labels))

    @property
    def test_count(self) -> int:
        return int(len(self.test_labels))

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)

    def counts(self) -> dict[str, Any]:
        """JSON-ready counts: totals, per class, and skipped files."""
        train_per_class = np.bincount(self.train_labels, minlength=self.num_classes)
        test_per_class = np.bincount(self.test_labels, minlength=self.num_classes)
        return {
            "train": self.train_count,
            "test": self.test_count,
            "skipped": self.skipped_count,
            "train_per_class": {name: int(n) for name, n in zip(self.class_names, train_per_class)},
            "test_per_class": {name: int(n) for name, n in zip(self.class_names, test_per_class)},
        }

    def summary(self) -> str:
        """One line for the person: how much was loaded from where."""
        if TRAIN_FOLDER not in self.loaded_splits:
            counted = f"{self.test_count:,} test images (training images not read)"
        elif TEST_FOLDER not in self.loaded_splits:
            counted = f"{self.train_count:,} training images (test images not read)"
        else:
            counted = f"{self.train_count:,} training and {self.test_count:,} test images"
        line = f"{counted} in {self.num_classes} classes from {self.source}"
        if self.skipped:
            line += f" ({self.skipped_count:,} unreadable file{'s' if self.skipped_count != 1 else ''} skipped)"
        return line
