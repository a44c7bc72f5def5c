"""How much of a model file, and of the files beside it, the toolkit agrees to read.

Every byte of a model is input from outside: a `.tflite` can carry an appended zip archive whose
entries inflate to gigabytes, a directory that lies about sizes, or a metadata flatbuffer whose
offsets point anywhere. These limits are checked before anything is decompressed or parsed, and
the readers stream with a cap so that a file that lies about its sizes is caught while it is read.
The converter checks the same limits before it writes, so we never write what we would refuse.

The limits are far above what a classifier needs (ImageNet-21k has 21,843 labels, about 400 KiB)
and far below what hurts a Raspberry Pi: whatever a model says, reading its labels, preprocessing,
manifest and metadata costs at most a few tens of MB beyond the model itself.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from typing import Any, NamedTuple

from ..errors import ModelError

KIB = 1 << 10
MIB = 1 << 20

# Labels, ours (labels.txt) or the official metadata's TENSOR_AXIS_LABELS file: one line per class.
LABELS_MAX_BYTES = 1 * MIB
LABELS_MAX_LINES = 100_000
# The official metadata's score calibration file: one line per class, like the labels.
CALIBRATION_MAX_BYTES = 1 * MIB
CALIBRATION_MAX_LINES = LABELS_MAX_LINES
# preprocess.json and model_info.json: a few hundred bytes in practice.
JSON_ENTRY_MAX_BYTES = 64 * KIB
# Any file appended to a model for the official metadata (the converter writes nothing bigger).
ASSOCIATED_FILE_MAX_BYTES = 1 * MIB
# manifest.json lists each model's size and sha256 and the labels (JSON escapes can triple them).
MANIFEST_MAX_BYTES = 8 * MIB

# The appended zip archive: entries, the size of its central directory, and how far an entry may
# inflate. Below the ratio floor an entry is too small to matter whatever its ratio.
ARCHIVE_MAX_ENTRIES = 256
ARCHIVE_DIRECTORY_MAX_BYTES = 128 * KIB
ARCHIVE_MAX_RATIO = 100
ARCHIVE_RATIO_FLOOR_BYTES = 64 * KIB
# Decompressed bytes asked for at a time while an entry is streamed.
READ_CHUNK_BYTES = 64 * KIB

# The official metadata flatbuffer (TFLITE_METADATA buffer): its size, nesting and the number of
# tables, strings and vectors a reader may visit (a buffer can point many offsets at one table).
METADATA_FLATBUFFER_MAX_BYTES = 1 * MIB
FLATBUFFER_MAX_DEPTH = 64
FLATBUFFER_MAX_OBJECTS = 10_000
# Entries of a model's own metadata table (TFLite writes two or three: runtime version, metadata).
MODEL_METADATA_MAX_ENTRIES = 1_000

# Every boundary str.splitlines() splits on, so a line count matches what the parser will make.
_LINE_BREAK = re.compile("\r\n|[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


class Limit(NamedTuple):
    """What one kind of file may hold: bytes, and lines when it is read line by line."""

    what: str  # how messages name the kind of file, e.g. "labels"
    max_bytes: int
    max_lines: int | None = None


LABELS = Limit("labels", LABELS_MAX_BYTES, LABELS_MAX_LINES)
CALIBRATION = Limit("score calibration", CALIBRATION_MAX_BYTES, CALIBRATION_MAX_LINES)
JSON_ENTRY = Limit("JSON entry", JSON_ENTRY_MAX_BYTES)
ASSOCIATED_FILE = Limit("associated file", ASSOCIATED_FILE_MAX_BYTES)
MANIFEST = Limit("manifest", MANIFEST_MAX_BYTES)


def size_text(count: int) -> str:
    """Bytes for people: '1 MiB', '64 KiB', '4,294,967,295 bytes'."""
    for unit, name in ((MIB, "MiB"), (KIB, "KiB")):
        if count >= unit and count % unit == 0:
            return f"{count // unit} {name}"
    return f"{count:,} bytes"


def count_lines(text: str, stop_after: int) -> int:
    """The number of lines str.splitlines() would make of `text`, counting no further than `stop_after`."""
    breaks = sum(1 for _ in itertools.islice(_LINE_BREAK.finditer(text), stop_after + 1))
    ends_with_break = bool(text) and _LINE_BREAK.fullmatch(text[-1]) is not None
    return breaks + (0 if ends_with_break or not text else 1)


def check_text(text: str, limit: Limit, where: str) -> None:
    """Refuse text with more lines than `limit` allows; ModelError names `where`."""
    if limit.max_lines is None:
        return
    lines = count_lines(text, limit.max_lines)
    if lines > limit.max_lines:
        raise ModelError(f"{where}: more than {limit.max_lines:,} lines of {limit.what} "
                         f"(the limit is {limit.max_lines:,})")


def check_bytes(data: bytes, limit: Limit, where: str) -> None:
    """Refuse data larger than `limit` (the writer's side of the same check the readers make)."""
    if len(data) > limit.max_bytes:
        raise ModelError(f"{where}: {limit.what} of {size_text(len(data))} is over the limit of "
                         f"{size_text(limit.max_bytes)}")


def decode_text(data: bytes, limit: Limit, where: str) -> str:
    """UTF-8 text within `limit`'s bytes and lines; ModelError naming `where` otherwise."""
    check_bytes(data, limit, where)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ModelError(f"{where}: the {limit.what} text is not UTF-8") from error
    check_text(text, limit, where)
    return text


def parse_json(data: bytes, limit: Limit, where: str) -> Any:
    """JSON within `limit`; ModelError naming `where` when it is too big, too deep or not JSON."""
    check_bytes(data, limit, where)
    try:
        return json.loads(data)
    except RecursionError as error:
        raise ModelError(f"{where}: {limit.what} is nested too deeply to read") from error
    except ValueError as error:  # also UnicodeDecodeError
        raise ModelError(f"{where}: {limit.what} is not valid JSON ({error})") from error


def read_file_bounded(path: str | os.PathLike, limit: Limit) -> bytes:
    """The bytes of a file, refusing one over `limit` without reading more than one byte past it.

    OSError (missing, unreadable) is the caller's to report; ModelError names the file when it is too big.
    """
    with open(path, "rb") as handle:
        data = handle.read(limit.max_bytes + 1)
    if len(data) > limit.max_bytes:
        raise ModelError(f"{path}: {limit.what} file is over the limit of {size_text(limit.max_bytes)}")
    return data
