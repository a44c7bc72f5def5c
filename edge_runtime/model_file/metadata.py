"""Labels and preprocessing embedded in a `.tflite` file, readable without TensorFlow.

They travel as associated files in a zip archive appended to the model's flatbuffer, the same
container TFLite's metadata format uses for its associated files: interpreters read the flatbuffer
and ignore the trailing archive, and Python's `zipfile` reads the archive and ignores the leading
flatbuffer. Entries carry a fixed timestamp so the same inputs always give the same bytes.

Both sides hold to `limits`: the archive is opened and its entries read by `bounded_zip` (labels at
most `LABELS_MAX_BYTES` and `LABELS_MAX_LINES`, the JSON entries `JSON_ENTRY_MAX_BYTES`), and
`embed_metadata` refuses to write entries over the same limits.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
from typing import IO, Any

from ..errors import ModelError
from ..preprocess import PreprocessSpec
from .bounded_zip import open_archive
from .labels import format_labels, parse_labels
from .limits import JSON_ENTRY, LABELS, check_bytes, check_text, decode_text, parse_json

LABELS_ENTRY = "labels.txt"
PREPROCESS_ENTRY = "preprocess.json"
INFO_ENTRY = "model_info.json"
METADATA_FORMAT_VERSION = 1
# Zip cannot store dates before 1980; a fixed date keeps the output reproducible.
FIXED_ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
# The flatbuffer identifier TFLite writes at offset 4 of every model file.
TFLITE_FILE_IDENTIFIER = b"TFL3"
PIXEL_MAX = 255


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    """What a device needs to know about a model beyond its tensors."""

    labels: list[str]
    preprocess: PreprocessSpec
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


def is_tflite_flatbuffer(data: bytes) -> bool:
    """True when `data` starts like a TFLite flatbuffer (identifier 'TFL3' at offset 4)."""
    return len(data) >= 8 and data[4:8] == TFLITE_FILE_IDENTIFIER


def embed_metadata(model_bytes: bytes, metadata: ModelMetadata) -> bytes:
    """Return the model with labels and preprocessing appended as associated files.

    Refuses (ModelError) entries over the limits the readers apply, so nothing written here is
    refused when it is read back.
    """
    if not is_tflite_flatbuffer(model_bytes):
        raise ModelError("refusing to embed metadata: the input is not a TFLite flatbuffer")
    if read_metadata_bytes(model_bytes) is not None:
        raise ModelError("refusing to embed metadata: the model already carries an archive")
    info = {"format_version": METADATA_FORMAT_VERSION, **metadata.info}
    labels_text = format_labels(metadata.labels)
    entries = {
        LABELS_ENTRY: labels_text.encode("utf-8"),
        PREPROCESS_ENTRY: _json_bytes(metadata.preprocess.to_dict()),
        INFO_ENTRY: _json_bytes(info),
    }
    where = "refusing to embed metadata: "
    check_bytes(entries[LABELS_ENTRY], LABELS, where + LABELS_ENTRY)
    check_text(labels_text, LABELS, where + LABELS_ENTRY)
    for name in (PREPROCESS_ENTRY, INFO_ENTRY):
        check_bytes(entries[name], JSON_ENTRY, where + name)
    return append_stored_files(model_bytes, entries)


def append_stored_files(model_bytes: bytes, files: dict[str, bytes]) -> bytes:
    """`model_bytes` followed by a zip archive of `files`, stored uncompressed with a fixed date
    (the writer of both our metadata and the official metadata's associated files)."""
    import zipfile  # the writer's side only: reading goes through bounded_zip, which needs no zipfile

    buffer = io.BytesIO()
    buffer.write(model_bytes)
    # Mode "a" on bytes that are not a zip appends a new archive after them.
    with zipfile.ZipFile(buffer, mode="a", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIMESTAMP), data)
    return buffer.getvalue()


def read_metadata_bytes(data: bytes) -> ModelMetadata | None:
    """Read embedded metadata from model bytes; None when the model carries none."""
    return _read_archive(io.BytesIO(data))


def _read_archive(handle: IO[bytes]) -> ModelMetadata | None:
    archive = open_archive(handle)
    if archive is None:
        return None
    with archive:
        names = archive.names()
        if LABELS_ENTRY not in names or PREPROCESS_ENTRY not in names:
            return None
        labels_where = f"embedded {LABELS_ENTRY}"
        labels = parse_labels(decode_text(archive.read(LABELS_ENTRY, LABELS), LABELS, labels_where))
        preprocess = parse_json(archive.read(PREPROCESS_ENTRY, JSON_ENTRY), JSON_ENTRY, f"embedded {PREPROCESS_ENTRY}")
        info = (parse_json(archive.read(INFO_ENTRY, JSON_ENTRY), JSON_ENTRY, f"embedded {INFO_ENTRY}")
                if INFO_ENTRY in names else {})
    try:
        spec = PreprocessSpec.from_dict(preprocess)
        _check_spec_types(spec)
    except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as error:
        raise ModelError(f"embedded metadata is damaged ({error})") from error
    if not isinstance(info, dict):
        raise ModelError(f"embedded metadata is damaged ({INFO_ENTRY} is not a JSON object)")
    return ModelMetadata(labels=labels, preprocess=spec, info=info)


def read_metadata(path: str | os.PathLike) -> ModelMetadata | None:
    """Read embedded metadata from a `.tflite` file; None when it carries none.

    Opens the archive in place, so only its small directory and entries are read, not the whole
    model; anything over the limits of `limits`, or damaged, is a ModelError naming the file.
    """
    try:
        with open(path, "rb") as handle:
            return _read_archive(handle)
    except ModelError as error:
        raise ModelError(f"{path}: {error}") from error


def _check_spec_types(spec: PreprocessSpec) -> None:
    """ValueError when a field read from JSON has another type than the field's default (a string
    where a number belongs would otherwise fail later, in the middle of classifying)."""
    for field in dataclasses.fields(spec):
        value, default = getattr(spec, field.name), field.default
        if isinstance(default, bool) or isinstance(default, str):
            ok = type(value) is type(default)
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else:  # the background colour: three channel values
            ok = len(value) == len(default) and all(0 <= channel <= PIXEL_MAX for channel in value)
        if not ok:
            raise ValueError(f"{PREPROCESS_ENTRY} gives {field.name} = {value!r}")


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")
