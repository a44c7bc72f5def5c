"""The CIFAR-10 python format: `cifar-10-python.tar.gz` read in place, or its `cifar-10-batches-py` folder.

The batches are pickles: they are read by an unpickler that can only rebuild numpy arrays and plain
containers, so a tampered archive cannot run code.
"""

from __future__ import annotations

import io
import pickle
import tarfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from edge_runtime.errors import DataError

from ..dataset import Dataset
from ..progress import Progress

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


def is_cifar_folder(folder: Path) -> bool:
    """Whether `folder` holds CIFAR-10 python batches (its first training batch or its test batch)."""
    return (folder / f"{CIFAR_TRAIN_PREFIX}1").is_file() or (folder / CIFAR_TEST_BATCH).is_file()
