"""Where training data comes from: one module per source, and `load_dataset`, which picks the source.

`image_folders` (a train/ + test/ tree or a single class-folder tree), `cifar_archive` (the CIFAR-10
python archive or its extracted folder) and `keras_download` (CIFAR-10 through Keras) each return a
`trainer.dataset.Dataset` of uint8 arrays. Decoding files (`trainer.decoding`) and resizing arrays
(`trainer.resizing`) sit below them.
"""

from __future__ import annotations

import dataclasses
import os
import tarfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge_runtime.errors import DataError
from edge_runtime.preprocess import DEFAULT_SPEC, PreprocessSpec

from ..dataset import DEFAULT_SEED, DEFAULT_TEST_FRACTION, SPLITS, TEST_FOLDER, TRAIN_FOLDER, Dataset, Picker
from ..progress import Progress
from ..resizing import resize_dataset
from .cifar_archive import CIFAR_FOLDER, is_cifar_folder, load_cifar_archive, load_cifar_folder
from .image_folders import load_single_tree, load_split_tree
from .keras_download import load_keras_cifar10


def load_dataset(source: str | os.PathLike | None, seed: int = DEFAULT_SEED,
                 test_fraction: float = DEFAULT_TEST_FRACTION, progress: Progress | None = None,
                 workers: int | None = None, splits: Sequence[str] = SPLITS,
                 spec: PreprocessSpec = DEFAULT_SPEC, pick: Picker | None = None) -> Dataset:
    """Load a data set into memory as uint8 images of `spec`'s size (default 32x32).

    `source` None is CIFAR-10 through Keras' download. Otherwise a path to: a folder with `train/`
    and `test/` class-folder trees; a single class-folder tree (split per class into train and
    test by `test_fraction` with `seed`); `cifar-10-python.tar.gz`; or its `cifar-10-batches-py`
    folder. Raises DataError naming the path for anything that is not a usable data set.

    `splits` names the splits the caller needs. A `train/` + `test/` tree decodes only those files
    (the other split comes back empty, see `Dataset.loaded_splits`); the other sources read both,
    since a single tree's split depends on which of its files decode. Image files are decoded by
    `edge_runtime.preprocess.load_image` with `spec`; CIFAR-10's 32x32 arrays are resized to it.

    `pick(split, count)` returns the sorted indices of the images of `split` to keep out of its
    `count` (a calibration draw, a sample for a quick report). A `train/` + `test/` tree then decodes
    only the picked files; a drawn file that cannot be read is skipped, so a split can come back a
    little smaller. Other sources are loaded whole and picked from afterwards.
    """
    splits = tuple(split for split in SPLITS if split in splits)
    if not splits:
        raise ValueError(f"splits must name at least one of {', '.join(SPLITS)}")
    progress = progress if progress is not None else Progress()
    dataset = _load(source, seed, test_fraction, progress, workers, splits, spec, pick)
    return dataset if pick is None or dataset.train_available is not None or dataset.test_available is not None \
        else _picked(dataset, pick, splits)


def _picked(dataset: Dataset, pick: Picker, splits: Sequence[str]) -> Dataset:
    """`dataset` with only the picked images of `splits` (for sources that are loaded whole)."""
    changes: dict[str, Any] = {}
    for split, prefix in ((TRAIN_FOLDER, "train"), (TEST_FOLDER, "test")):
        if split not in splits:
            continue
        labels = getattr(dataset, f"{prefix}_labels")
        chosen = np.asarray(pick(split, len(labels)), dtype=np.int64)
        paths = getattr(dataset, f"{prefix}_paths")
        changes.update({f"{prefix}_images": getattr(dataset, f"{prefix}_images")[chosen],
                        f"{prefix}_labels": labels[chosen], f"{prefix}_available": len(labels),
                        f"{prefix}_paths": None if paths is None else [paths[i] for i in chosen]})
    return dataclasses.replace(dataset, **changes)


def _load(source: str | os.PathLike | None, seed: int, test_fraction: float, progress: Progress,
          workers: int | None, splits: tuple[str, ...], spec: PreprocessSpec, pick: Picker | None) -> Dataset:
    """`load_dataset` by kind of source; only a train/ + test/ tree applies `pick` itself."""
    if source is None:
        return resize_dataset(load_keras_cifar10(progress), spec, progress)
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if _is_tar_archive(path):
            return resize_dataset(load_cifar_archive(path, progress), spec, progress)
        raise DataError(f"{path}: not a data folder or a CIFAR-10 python archive (cifar-10-python.tar.gz)")
    if not path.is_dir():
        raise DataError(f"{path}: not a file or folder")
    if is_cifar_folder(path):
        return resize_dataset(load_cifar_folder(path, progress), spec, progress)
    if is_cifar_folder(path / CIFAR_FOLDER):
        return resize_dataset(load_cifar_folder(path / CIFAR_FOLDER, progress), spec, progress)
    has_train, has_test = (path / TRAIN_FOLDER).is_dir(), (path / TEST_FOLDER).is_dir()
    if has_train and has_test:
        return load_split_tree(path, progress, workers, splits, spec, pick)
    if has_train or has_test:
        present, missing = (TRAIN_FOLDER, TEST_FOLDER) if has_train else (TEST_FOLDER, TRAIN_FOLDER)
        raise DataError(f"{path}: has a {present}/ folder but no {missing}/ folder "
                        f"(give both, or one sub-folder per class to split automatically)")
    return load_single_tree(path, seed, test_fraction, progress, workers, spec)


def _is_tar_archive(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False
