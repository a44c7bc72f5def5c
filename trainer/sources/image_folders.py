"""Image-folder trees: `root/train/<class>/...` and `root/test/<class>/...`, or one `root/<class>/...`
tree split per class into train and test with a seed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_runtime.errors import DataError
from edge_runtime.preprocess import DEFAULT_SPEC, PreprocessSpec

from ..dataset import SPLITS, TEST_FOLDER, TRAIN_FOLDER, Dataset, Picker
from ..decoding import decode_images
from ..progress import Progress


def find_class_folders(root: Path) -> list[tuple[str, list[Path]]]:
    """(class name, image files) for each sub-folder of `root`, sorted by name; files sorted, recursive.

    Hidden files and folders (names starting with ".") are ignored; loose files in `root` are not
    class data (a README, say) and are ignored too.
    """
    try:
        entries = sorted((entry for entry in os.scandir(root)
                          if entry.is_dir() and not entry.name.startswith(".")), key=lambda e: e.name)
    except OSError as error:
        raise DataError(f"{root}: cannot list folder ({error.strerror or error})") from error
    if len(entries) < 2:
        found = ", ".join(entry.name for entry in entries) or "none"
        raise DataError(f"{root}: found {len(entries)} class folder{'s' if len(entries) != 1 else ''} "
                        f"({found}); need at least two, one sub-folder per class")
    classes = []
    for entry in entries:
        files = _list_files(Path(entry.path))
        if not files:
            raise DataError(f"{entry.path}: class folder is empty")
        classes.append((entry.name, files))
    return classes


def _list_files(folder: Path) -> list[Path]:
    """Every non-hidden file under `folder`, in a stable sorted order."""
    files = []
    for directory, subdirs, names in os.walk(folder):
        subdirs[:] = sorted(name for name in subdirs if not name.startswith("."))
        files.extend(Path(directory) / name for name in sorted(names) if not name.startswith("."))
    return files


def load_split_tree(root: Path, progress: Progress, workers: int | None = None,
                    splits: Sequence[str] = SPLITS, spec: PreprocessSpec = DEFAULT_SPEC,
                    pick: Picker | None = None) -> Dataset:
    """Load `root/train/<class>/...` and `root/test/<class>/...`; both must have the same classes.

    Only the files of `splits` are decoded; a split left out comes back with no images. With `pick`,
    only the picked files of each split (see `load_dataset`).
    """
    train_classes = find_class_folders(root / TRAIN_FOLDER)
    test_classes = find_class_folders(root / TEST_FOLDER)
    train_names = [name for name, _ in train_classes]
    test_names = [name for name, _ in test_classes]
    if train_names != test_names:
        only_train = sorted(set(train_names) - set(test_names))
        only_test = sorted(set(test_names) - set(train_names))
        details = []
        if only_train:
            details.append(f"only in {TRAIN_FOLDER}/: {', '.join(only_train)}")
        if only_test:
            details.append(f"only in {TEST_FOLDER}/: {', '.join(only_test)}")
        raise DataError(f"{root}: {TRAIN_FOLDER}/ and {TEST_FOLDER}/ have different class folders ("
                        + "; ".join(details) + ")")
    train_files, train_labels = _flatten(train_classes)
    test_files, test_labels = _flatten(test_classes)
    if TRAIN_FOLDER not in splits:
        train_files, train_labels = [], train_labels[:0]
    if TEST_FOLDER not in splits:
        test_files, test_labels = [], test_labels[:0]
    available = {TRAIN_FOLDER: len(train_files), TEST_FOLDER: len(test_files)}
    if pick is not None:
        train_files, train_labels = _pick_files(pick, TRAIN_FOLDER, splits, train_files, train_labels)
        test_files, test_labels = _pick_files(pick, TEST_FOLDER, splits, test_files, test_labels)
    read = " and ".join(f"{split}/" for split in splits)
    picked = "" if pick is None else " (picked from " + " and ".join(
        f"{available[split]:,} in {split}/" for split in splits) + ")"
    progress.message(f"loading {len(train_files) + len(test_files):,} images from {root} ({read}){picked}")
    # Each split is decoded (and cached) on its own: the converter reads only train/, the report only test/.
    train_images, train_kept, train_skipped = decode_images(train_files, progress, workers, spec)
    test_images, test_kept, test_skipped = decode_images(test_files, progress, workers, spec)
    for split, labels, split_kept in ((TRAIN_FOLDER, train_labels, train_kept), (TEST_FOLDER, test_labels, test_kept)):
        if split in splits:
            # Picked files may leave a class out on purpose; only a class that had files must read.
            _check_every_class_readable(root / split, train_names, labels, split_kept,
                                        only_present=pick is not None)
    return Dataset(
        train_images=_kept(train_images, train_kept),
        train_labels=train_labels[train_kept],
        test_images=_kept(test_images, test_kept),
        test_labels=test_labels[test_kept],
        class_names=train_names,
        source=f"image folders {root}",
        train_paths=[str(p) for p, keep in zip(train_files, train_kept) if keep],
        test_paths=[str(p) for p, keep in zip(test_files, test_kept) if keep],
        skipped=train_skipped + test_skipped,
        loaded_splits=tuple(splits),
        train_available=available[TRAIN_FOLDER] if pick is not None and TRAIN_FOLDER in splits else None,
        test_available=available[TEST_FOLDER] if pick is not None and TEST_FOLDER in splits else None,
    )


def _pick_files(pick: Picker, split: str, splits: Sequence[str], files: list[Path],
                labels: np.ndarray) -> tuple[list[Path], np.ndarray]:
    """The picked files of `split` and their labels (all of them when the split is not wanted: none)."""
    if split not in splits:
        return files, labels
    chosen = np.asarray(pick(split, len(files)), dtype=np.int64)
    return [files[index] for index in chosen], labels[chosen]


def load_single_tree(root: Path, seed: int, test_fraction: float, progress: Progress,
                     workers: int | None = None, spec: PreprocessSpec = DEFAULT_SPEC) -> Dataset:
    """Load `root/<class>/...` and split each class into train and test with `seed`."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test fraction {test_fraction} must be between 0 and 1 (exclusive)")
    classes = find_class_folders(root)
    names = [name for name, _ in classes]
    files, labels = _flatten(classes)
    progress.message(f"loading {len(files):,} images from {root} "
                     f"(one tree: holding out {test_fraction:.0%} of each class for testing, seed {seed})")
    images, kept, skipped = decode_images(files, progress, workers, spec)
    _check_every_class_readable(root, names, labels, kept)
    is_test = stratified_test_mask(labels[kept], len(names), test_fraction, seed)
    kept_files = [path for path, keep in zip(files, kept) if keep]
    images, labels = images[kept], labels[kept]
    return Dataset(
        train_images=images[~is_test],
        train_labels=labels[~is_test],
        test_images=images[is_test],
        test_labels=labels[is_test],
        class_names=names,
        source=f"image folder {root} (split {1 - test_fraction:.0%}/{test_fraction:.0%} with seed {seed})",
        train_paths=[str(p) for p, test in zip(kept_files, is_test) if not test],
        test_paths=[str(p) for p, test in zip(kept_files, is_test) if test],
        skipped=skipped,
    )


def stratified_test_mask(labels: np.ndarray, num_classes: int, test_fraction: float, seed: int) -> np.ndarray:
    """A boolean mask choosing `test_fraction` of each class (at least one, never all) with `seed`."""
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(labels), dtype=bool)
    for class_index in range(num_classes):
        members = np.flatnonzero(labels == class_index)
        if len(members) < 2:
            continue  # a single image has to stay in training
        count = min(max(1, int(round(len(members) * test_fraction))), len(members) - 1)
        is_test[rng.permutation(members)[:count]] = True
    return is_test


def _kept(images: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The images whose files decoded: a view when all did (large inputs are not copied), else a copy."""
    return images if kept.all() else images[kept]


def _flatten(classes: list[tuple[str, list[Path]]]) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for index, (_, class_files) in enumerate(classes):
        files.extend(class_files)
        labels.extend([index] * len(class_files))
    return files, np.asarray(labels, dtype=np.int64)


def _check_every_class_readable(root: Path, names: Sequence[str], labels: np.ndarray, kept: np.ndarray,
                                only_present: bool = False) -> None:
    """Stop when a class folder had files but none of them could be read (with `only_present`, a class
    with no files in `labels` is not checked)."""
    readable = np.bincount(labels[kept], minlength=len(names))
    present = np.bincount(labels, minlength=len(names)) > 0
    for name, count, has_files in zip(names, readable, present):
        if count == 0 and (has_files or not only_present):
            raise DataError(f"{root / name}: no readable images in class folder "
                            f"(every file was skipped, see the warnings above)")
