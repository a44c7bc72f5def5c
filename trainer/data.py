"""Training data as uint8 arrays: CIFAR-10 through Keras, an image-folder tree, or the CIFAR-10 python archive.

Every image of an image-folder tree goes through `edge_runtime.preprocess.load_image`, the one
preprocessing definition, so the arrays here are exactly what the device computes for the same file.
The CIFAR-10 python batches are pickles: they are read by an unpickler that can only rebuild numpy
arrays and plain containers, so a tampered archive cannot run code.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import io
import logging
import multiprocessing
import os
import pickle
import signal
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import click
import numpy as np

from edge_runtime.errors import DataError, ImageError
from edge_runtime.preprocess import DEFAULT_SPEC, PreprocessSpec, array_to_input, load_image

from . import decoded_cache
from .invocation import knob

logger = logging.getLogger(__name__)

DEFAULT_SEED = 0
# Share of each class held out as the test set when a single class-folder tree is given.
DEFAULT_TEST_FRACTION = 0.2
TRAIN_FOLDER = "train"
TEST_FOLDER = "test"
SPLITS = (TRAIN_FOLDER, TEST_FOLDER)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR_SIDE = 32
CIFAR_CHANNELS = 3
CIFAR_ROW_BYTES = CIFAR_SIDE * CIFAR_SIDE * CIFAR_CHANNELS
CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_PREFIX = "data_batch_"
CIFAR_TEST_BATCH = "test_batch"
CIFAR_META = "batches.meta"
# An official batch is about 31 MB; anything far larger is not a CIFAR-10 batch and is not read into memory.
MAX_BATCH_BYTES = 256 * 1024 * 1024

# Below this many files a process pool costs more to start than it saves.
PARALLEL_MIN_FILES = 4000
FILES_PER_TASK = 500
# Modules that run threads of their own; a process that has loaded one is not forked.
# `load_dataset(pick=...)`: (split name, image count) -> sorted indices of the images to keep.
Picker = Callable[[str, int], np.ndarray]
HEAVY_THREADED_MODULES = ("tensorflow", "keras", "torch", "jax")
PROGRESS_INTERVAL_SECONDS = 2.0


class Progress:
    """Tells the person what long work is doing, on stderr: messages, throttled counts, warnings, and
    on a terminal a status line redrawn in place.

    `quiet` hides messages, counts and status; warnings are always shown, one line each. `live`
    (default: whether stderr is a terminal) decides whether `status` draws anything: a log file
    gets whole lines only.
    """

    def __init__(self, quiet: bool = False, interval_seconds: float = PROGRESS_INTERVAL_SECONDS,
                 live: bool | None = None) -> None:
        self.quiet = quiet
        self.interval_seconds = interval_seconds
        self._last_count_time: float | None = None
        self._live = live
        self._status_width = 0

    @property
    def live(self) -> bool:
        """Whether a status line can be redrawn in place (not quiet, and stderr is a terminal)."""
        if self.quiet:
            return False
        if self._live is None:
            self._live = bool(getattr(sys.stderr, "isatty", lambda: False)())
        return self._live

    def status(self, text: str) -> None:
        """Redraw the one-line status in place (a terminal only; nothing elsewhere)."""
        if not self.live:
            return
        padding = " " * max(0, self._status_width - len(text))
        click.echo(f"\r{text}{padding}", err=True, nl=False)
        self._status_width = len(text)

    def end_status(self) -> None:
        """Erase the status line, if one is shown, so the next message starts on a clean line."""
        if self._status_width:
            click.echo("\r" + " " * self._status_width + "\r", err=True, nl=False)
            self._status_width = 0

    def message(self, text: str) -> None:
        """One line about what is happening."""
        if not self.quiet:
            self.end_status()
            click.echo(text, err=True)

    def warning(self, text: str) -> None:
        """One line about something skipped or suspicious; shown even when quiet."""
        self.end_status()
        click.echo(f"warning: {text}", err=True)

    def count(self, label: str, done: int, total: int) -> None:
        """`label: done/total`, at most every `interval_seconds` and always at the end."""
        now = time.monotonic()
        recent = self._last_count_time is not None and now - self._last_count_time < self.interval_seconds
        if done < total and recent:
            return
        self._last_count_time = now
        self.message(f"{label}: {done:,}/{total:,}")


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
    if _is_cifar_folder(path):
        return resize_dataset(load_cifar_folder(path, progress), spec, progress)
    if _is_cifar_folder(path / CIFAR_FOLDER):
        return resize_dataset(load_cifar_folder(path / CIFAR_FOLDER, progress), spec, progress)
    has_train, has_test = (path / TRAIN_FOLDER).is_dir(), (path / TEST_FOLDER).is_dir()
    if has_train and has_test:
        return load_split_tree(path, progress, workers, splits, spec, pick)
    if has_train or has_test:
        present, missing = (TRAIN_FOLDER, TEST_FOLDER) if has_train else (TEST_FOLDER, TRAIN_FOLDER)
        raise DataError(f"{path}: has a {present}/ folder but no {missing}/ folder "
                        f"(give both, or one sub-folder per class to split automatically)")
    return load_single_tree(path, seed, test_fraction, progress, workers, spec)


# --- image-folder trees -------------------------------------------------------------------------

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


# --- decoding ------------------------------------------------------------------------------------

def decode_images(paths: Sequence[Path], progress: Progress, workers: int | None = None,
                  spec: PreprocessSpec = DEFAULT_SPEC, cache: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode every file with the shared preprocessing at `spec`'s size, in order.

    Returns (images uint8 [len(paths), H, W, 3], kept bool [len(paths)], skipped (path, reason)).
    Unreadable files keep a zero image and `kept` False; each gets one warning. Large sets are
    decoded by a pool of processes: the result is the same array, only sooner. With `cache`, sets
    of `decoded_cache.MIN_FILES` files or more are decoded once into the on-disk cache and come back
    memory-mapped (read-only) from there, now and in later runs over the same files.
    """
    total = len(paths)
    root = decoded_cache.cache_root() if cache and total >= decoded_cache.MIN_FILES else None
    key = decoded_cache.cache_key(paths, spec) if root is not None else None
    entry = None
    if root is not None and key is not None:
        hit = decoded_cache.read(root, key, total, spec)
        if hit is not None:
            progress.message(f"decoded images: all {total:,} read from the cache {root / key}")
            for path, reason in hit.skipped:
                progress.warning(f"skipped {path}: {reason}")
            return hit.images, hit.kept, hit.skipped
        entry = decoded_cache.new_entry(root, total, spec)
    if entry is None:
        images = np.zeros((total, spec.height, spec.width, 3), dtype=np.uint8)
    else:
        images = entry[1]
    try:
        kept, skipped = _decode_into(images, paths, progress, workers, spec)
    except BaseException:
        if entry is not None:
            del images
            decoded_cache.discard(entry[0])
        raise
    if entry is None:
        return images, kept, skipped
    stored = decoded_cache.commit(entry[0].parent, key, entry[0], images, kept, skipped)
    return stored.images, stored.kept, stored.skipped


def _decode_into(images: np.ndarray, paths: Sequence[Path], progress: Progress, workers: int | None,
                 spec: PreprocessSpec) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode `paths` into `images` (in place); (kept, skipped) as `decode_images` returns them."""
    total = len(paths)
    kept = np.ones(total, dtype=bool)
    skipped: list[tuple[str, str]] = []
    chunks = [[str(p) for p in paths[start:start + FILES_PER_TASK]] for start in range(0, total, FILES_PER_TASK)]
    processes = _worker_count(workers) if total >= PARALLEL_MIN_FILES else 1
    logger.debug("decoding %d files in %d chunks with up to %d processes", total, len(chunks), processes)
    done = 0
    for chunk_index, (chunk_images, failures) in enumerate(_decode_chunks(chunks, processes, spec)):
        start = chunk_index * FILES_PER_TASK
        images[start:start + len(chunk_images)] = chunk_images
        for offset, reason in failures:
            path = chunks[chunk_index][offset]
            kept[start + offset] = False
            skipped.append((path, reason))
            progress.warning(f"skipped {path}: {reason}")
        done += len(chunk_images)
        progress.count("decoded images", done, total)
    return kept, skipped


def _worker_count(workers: int | None) -> int:
    if workers is not None:
        return max(1, workers)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _decode_chunks(chunks: list[list[str]], worker_count: int, spec: PreprocessSpec = DEFAULT_SPEC
                   ) -> Iterator[tuple[np.ndarray, list[tuple[int, str]]]]:
    """Yield `_decode_chunk` results in chunk order, serially or from a process pool."""
    context = _pool_context()
    decode = functools.partial(_decode_chunk, spec=spec)
    if worker_count <= 1 or len(chunks) <= 1 or context is None:
        for chunk in chunks:
            yield decode(chunk)
        return
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(worker_count, len(chunks)), mp_context=context,
                                                initializer=_ignore_interrupts) as pool:
        try:
            yield from pool.map(decode, chunks)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _pool_context() -> multiprocessing.context.BaseContext | None:
    """The "fork" start method when it is safe here, else None (decode serially).

    Forking a process that has loaded TensorFlow copies locks held by its threads, so a pool is used
    only before TensorFlow is imported (the trainer loads data first). "spawn" is not used: it re-runs
    the caller's main script, which breaks scripts without an `if __name__ == "__main__"` guard.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    if any(name in sys.modules for name in HEAVY_THREADED_MODULES):
        return None
    return multiprocessing.get_context("fork")


def _ignore_interrupts() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops the pool and reports once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _decode_chunk(paths: list[str], spec: PreprocessSpec = DEFAULT_SPEC) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode `paths` into one array; unreadable files give (position, reason) and a zero image."""
    images = np.zeros((len(paths), spec.height, spec.width, 3), dtype=np.uint8)
    failures = []
    for index, path in enumerate(paths):
        try:
            images[index] = load_image(path, spec)
        except ImageError as error:
            failures.append((index, _reason(str(error), path)))
        except OSError as error:  # e.g. a file removed while loading
            failures.append((index, f"cannot read ({error.strerror or error})"))
    return images, failures


def _reason(message: str, path: str) -> str:
    """The reason part of an ImageError message, which starts with the path."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


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


# --- CIFAR-10 through Keras ----------------------------------------------------------------------

def load_keras_cifar10(progress: Progress) -> Dataset:
    """CIFAR-10 through `keras.datasets.cifar10.load_data()` (downloads about 170 MB once, then cached)."""
    progress.message(f"loading CIFAR-10 through Keras (downloads about 170 MB on first use; "
                     f"use {knob('--data', 'PATH')} for a local copy)")
    from .tensorflow_env import import_tensorflow

    import_tensorflow("edge-train")  # one line naming the extra to install when TensorFlow is missing
    import keras  # lazy: TensorFlow only where it is needed

    try:
        (train_images, train_labels), (test_images, test_labels) = keras.datasets.cifar10.load_data()
    except Exception as error:  # Keras raises a bare Exception for download failures
        raise DataError(f"CIFAR-10 download through Keras failed ({error}); "
                        f"pass {knob('--data', 'PATH')} with a local copy") from error
    return Dataset(
        train_images=np.ascontiguousarray(train_images, dtype=np.uint8),
        train_labels=np.asarray(train_labels, dtype=np.int64).reshape(-1),
        test_images=np.ascontiguousarray(test_images, dtype=np.uint8),
        test_labels=np.asarray(test_labels, dtype=np.int64).reshape(-1),
        class_names=list(CIFAR10_CLASSES),
        source="CIFAR-10 (keras.datasets.cifar10)",
    )


# --- the CIFAR-10 python archive -----------------------------------------------------------------

class _NdarrayType:
    """Stands in for numpy.ndarray inside a pickle: usable only as `_reconstruct`'s first argument."""


_NDARRAY_TYPE = _NdarrayType()


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    # numpy pickles an array as _reconstruct(ndarray, (0,), b"b") followed by __setstate__ with the
    # real shape, dtype and bytes; numpy checks that those bytes match the declared shape.
    if subtype is not _NDARRAY_TYPE:
        raise pickle.UnpicklingError("array reconstruction with a type other than numpy.ndarray")
    return np.empty(0, dtype=np.uint8)


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
    if not isinstance(spec, (str, bytes)):
        raise pickle.UnpicklingError(f"unexpected dtype description {type(spec).__name__}")
    dtype = np.dtype(spec.decode("ascii") if isinstance(spec, bytes) else spec, align=bool(align))
    if dtype.hasobject:
        raise pickle.UnpicklingError("arrays of Python objects are not allowed")
    return dtype


def _frombuffer(buffer: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError("unexpected dtype in array buffer")
    return np.frombuffer(buffer, dtype=dtype).reshape(shape, order=order).copy()


def _latin1_encode(text: Any, encoding: str = "latin1") -> bytes:
    # Protocol-2 pickles from Python 3 store bytes as _codecs.encode(text, "latin1").
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("unexpected _codecs.encode call")
    return text.encode("latin1")


# Everything a CIFAR-10 batch pickle may name (Python 2 and 3, numpy 1 and 2); nothing else resolves.
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY_TYPE,
    ("numpy", "dtype"): _dtype,
    ("numpy.core.numeric", "_frombuffer"): _frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _frombuffer,
    ("_codecs", "encode"): _latin1_encode,
}


class _ArraysOnlyUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain containers and numpy arrays and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def unpickle_batch(data: bytes, name: str) -> dict[str, Any]:
    """Read one CIFAR batch pickle safely into a dict with str keys; DataError names `name`."""
    try:
        loaded = _ArraysOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except pickle.UnpicklingError as error:
        raise DataError(f"{name}: refused, not a plain CIFAR-10 batch ({error})") from error
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError, MemoryError,
            RecursionError, UnicodeDecodeError, OverflowError) as error:
        raise DataError(f"{name}: damaged CIFAR-10 batch ({type(error).__name__}: {error})") from error
    if not isinstance(loaded, dict):
        raise DataError(f"{name}: not a CIFAR-10 batch (a {type(loaded).__name__}, not a dictionary)")
    return {key.decode("latin1") if isinstance(key, bytes) else str(key): value for key, value in loaded.items()}


def _batch_arrays(batch: dict[str, Any], name: str, num_classes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 32, 32, 3], labels int64 [N]) from one unpickled batch."""
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_ROW_BYTES:
        raise DataError(f"{name}: 'data' is not a uint8 array of {CIFAR_ROW_BYTES}-byte rows")
    if not isinstance(labels, (list, np.ndarray)) or len(labels) != len(data):
        raise DataError(f"{name}: 'labels' is missing or does not match the {len(data)} images")
    try:
        label_array = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as error:
        raise DataError(f"{name}: 'labels' are not integers") from error
    upper = num_classes if num_classes is not None else len(CIFAR10_CLASSES)
    if len(label_array) and (label_array.min() < 0 or label_array.max() >= upper):
        raise DataError(f"{name}: labels outside 0..{upper - 1}")
    # Each row is 1024 red, then 1024 green, then 1024 blue values, each plane row-major.
    images = data.reshape(-1, CIFAR_CHANNELS, CIFAR_SIDE, CIFAR_SIDE).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), label_array


def _class_names(meta: dict[str, Any] | None, name: str) -> list[str]:
    if meta is None:
        return list(CIFAR10_CLASSES)
    names = meta.get("label_names")
    if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, (str, bytes)) for n in names):
        raise DataError(f"{name}: 'label_names' is not a list of class names")
    return [n.decode("utf-8") if isinstance(n, bytes) else n for n in names]


def _cifar_from_members(read: Callable[[str], bytes | None], where: str, progress: Progress) -> Dataset:
    """Assemble a Dataset from batch files, `read(name)` returning a member's bytes or None if absent."""
    meta_bytes = read(CIFAR_META)
    meta = unpickle_batch(meta_bytes, f"{where}/{CIFAR_META}") if meta_bytes is not None else None
    class_names = _class_names(meta, f"{where}/{CIFAR_META}")
    train_parts = []
    for index in range(1, 1000):
        member = f"{CIFAR_TRAIN_PREFIX}{index}"
        data = read(member)
        if data is None:
            break
        progress.message(f"reading {where}/{member}")
        train_parts.append(_batch_arrays(unpickle_batch(data, f"{where}/{member}"), f"{where}/{member}",
                                         len(class_names)))
    if not train_parts:
        raise DataError(f"{where}: no {CIFAR_TRAIN_PREFIX}1 (not a CIFAR-10 python data set)")
    test_bytes = read(CIFAR_TEST_BATCH)
    if test_bytes is None:
        raise DataError(f"{where}: {CIFAR_TEST_BATCH} is missing")
    test_images, test_labels = _batch_arrays(unpickle_batch(test_bytes, f"{where}/{CIFAR_TEST_BATCH}"),
                                             f"{where}/{CIFAR_TEST_BATCH}", len(class_names))
    train_labels = np.concatenate([labels for _, labels in train_parts])
    present = np.unique(np.concatenate([train_labels, test_labels]))
    if len(present) < 2:
        raise DataError(f"{where}: the batches hold fewer than two classes")
    return Dataset(
        train_images=np.concatenate([images for images, _ in train_parts]),
        train_labels=train_labels,
        test_images=test_images,
        test_labels=test_labels,
        class_names=class_names,
        source=f"CIFAR-10 python batches {where}",
    )


def load_cifar_archive(path: Path, progress: Progress) -> Dataset:
    """Read `cifar-10-python.tar.gz` in place (nothing is extracted to disk)."""
    try:
        with tarfile.open(path, "r:*") as archive:
            members = {Path(m.name).name: m for m in archive.getmembers() if m.isfile()}

            def read(name: str) -> bytes | None:
                member = members.get(name)
                if member is None:
                    return None
                if member.size > MAX_BATCH_BYTES:
                    raise DataError(f"{path}: {member.name} is {member.size:,} bytes, too large for a CIFAR-10 batch")
                handle = archive.extractfile(member)
                return handle.read() if handle is not None else None

            return _cifar_from_members(read, str(path), progress)
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"{path}: cannot read archive ({error})") from error


def load_cifar_folder(folder: Path, progress: Progress) -> Dataset:
    """Read an extracted `cifar-10-batches-py` folder."""

    def read(name: str) -> bytes | None:
        file = folder / name
        if not file.is_file():
            return None
        if file.stat().st_size > MAX_BATCH_BYTES:
            raise DataError(f"{file}: too large for a CIFAR-10 batch")
        try:
            return file.read_bytes()
        except OSError as error:
            raise DataError(f"{file}: cannot read ({error.strerror or error})") from error

    return _cifar_from_members(read, str(folder), progress)


def _is_cifar_folder(folder: Path) -> bool:
    return (folder / f"{CIFAR_TRAIN_PREFIX}1").is_file() or (folder / CIFAR_TEST_BATCH).is_file()


def _is_tar_archive(path: Path) -> bool:
    try:
        return tarfile.is_tarfile(path)
    except OSError:
        return False
