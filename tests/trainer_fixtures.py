"""Helpers for the trainer tests: tiny CIFAR-10 python batches, hostile pickles, damaged image files."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np

CIFAR_SIDE = 32
CIFAR_ROW_BYTES = CIFAR_SIDE * CIFAR_SIDE * 3
TINY_CLASS_NAMES = ("airplane", "automobile", "bird")
IMAGES_PER_BATCH = 6
TRAIN_BATCH_COUNT = 5
# numpy 1.x (which wrote the official archive's era of pickles) names this module; numpy 2 renamed it.
NUMPY1_MULTIARRAY = b"numpy.core.multiarray"
NUMPY2_MULTIARRAY = b"numpy._core.multiarray"


def planar_row(red: int, green: int, blue: int) -> np.ndarray:
    """One CIFAR row: 1024 red, 1024 green, 1024 blue values, each plane row-major.

    Red grows with the row (y) and green with the column (x), so a swapped axis or channel shows.
    """
    y, x = np.mgrid[0:CIFAR_SIDE, 0:CIFAR_SIDE]
    planes = [red + y, green + x, np.full_like(y, blue)]
    return np.concatenate([plane.reshape(-1) for plane in planes]).astype(np.uint8)


def batch_rows(batch_index: int, count: int = IMAGES_PER_BATCH) -> tuple[np.ndarray, list[int]]:
    """Rows whose colours encode (batch, position) and labels cycling through the classes."""
    rows = np.stack([planar_row(batch_index * 10 + i, 100 + i, 200 + batch_index) for i in range(count)])
    labels = [(batch_index + i) % len(TINY_CLASS_NAMES) for i in range(count)]
    return rows, labels


def pickle_batch(contents: dict, numpy1_names: bool = True, protocol: int = 2) -> bytes:
    """Pickle like the official files: bytes keys, protocol 2, numpy.core module names when asked."""
    data = pickle.dumps(contents, protocol=protocol)
    if numpy1_names:
        assert NUMPY2_MULTIARRAY in data  # protocol 2 names globals as newline-terminated text
        data = data.replace(NUMPY2_MULTIARRAY, NUMPY1_MULTIARRAY)
    return data


def cifar_members(numpy1_names: bool = True, protocol: int = 2) -> dict[str, bytes]:
    """The six batches and batches.meta of a tiny CIFAR-10 python data set."""
    members = {}
    for index in range(1, TRAIN_BATCH_COUNT + 1):
        rows, labels = batch_rows(index)
        members[f"data_batch_{index}"] = pickle_batch(
            {b"batch_label": f"training batch {index} of 5".encode(), b"labels": labels, b"data": rows,
             b"filenames": [f"img_{index}_{i}.png".encode() for i in range(len(labels))]},
            numpy1_names, protocol)
    rows, labels = batch_rows(0)
    members["test_batch"] = pickle_batch({b"batch_label": b"testing batch 1 of 1", b"labels": labels,
                                          b"data": rows}, numpy1_names, protocol)
    members["batches.meta"] = pickle.dumps({b"label_names": [n.encode() for n in TINY_CLASS_NAMES],
                                            b"num_cases_per_batch": IMAGES_PER_BATCH, b"num_vis": CIFAR_ROW_BYTES},
                                           protocol=2)
    return members


def write_cifar_folder(folder: Path, members: dict[str, bytes]) -> Path:
    """Write the members as files in `folder` (like the extracted cifar-10-batches-py)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in members.items():
        (folder / name).write_bytes(data)
    return folder


def write_cifar_archive(path: Path, members: dict[str, bytes], folder: str = "cifar-10-batches-py") -> Path:
    """Write a .tar.gz laid out like cifar-10-python.tar.gz."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


class RunsShellCommand:
    """Unpickling this with plain pickle runs a shell command (creates `marker`)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class CallsEval:
    """Unpickling this with plain pickle evaluates Python code (creates `marker`)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


def write_damaged_files(folder: Path) -> list[Path]:
    """A truncated JPEG, a zero-byte file and a text file named like an image, in `folder`."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    good = io.BytesIO()
    Image.new("RGB", (40, 40), (10, 200, 30)).save(good, format="JPEG")
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(good.getvalue()[:30])
    empty = folder / "empty.png"
    empty.write_bytes(b"")
    text = folder / "notes.jpg"
    text.write_text("this is not an image\n")
    return [truncated, empty, text]


class InterruptAfterEpoch:
    """Raise KeyboardInterrupt at the end of epoch `epoch` (1-based), as Ctrl-C would."""

    def __new__(cls, epoch: int):
        import keras

        class Interrupt(keras.callbacks.Callback):
            def on_epoch_end(self, index, logs=None):
                if index + 1 == epoch:
                    raise KeyboardInterrupt

        return Interrupt()
