"""Labels and preprocessing embedded in a `.tflite` file, readable without TensorFlow.

They travel as associated files in a zip archive appended to the model's flatbuffer, the same
container TFLite's metadata format uses for its associated files: interpreters read the flatbuffer
and ignore the trailing archive, and Python's `zipfile` reads the archive and ignores the leading
flatbuffer. Entries carry a fixed timestamp so the same inputs always give the same bytes.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import zipfile
from typing import IO, Any

from .errors import ModelError
from .labels import format_labels, parse_labels
from .preprocess import PreprocessSpec

LABELS_ENTRY = "labels.txt"
PREPROCESS_ENTRY = "preprocess.json"
INFO_ENTRY = "model_info.json"
METADATA_FORMAT_VERSION = 1
# Zip cannot store dates before 1980; a fixed date keeps the output reproducible.
FIXED_ZIP_TIMESTAMP = (1980, 1, 1, 0, 0, 0)
# The flatbuffer identifier TFLite writes at offset 4 of every model file.
TFLITE_FILE_IDENTIFIER = b"TFL3"


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
    """Return the model with labels and preprocessing appended as associated files."""
    if not is_tflite_flatbuffer(model_bytes):
        raise ModelError("refusing to embed metadata: the input is not a TFLite flatbuffer")
    if read_metadata_bytes(model_bytes) is not None:
        raise ModelError("refusing to embed metadata: the model already carries an archive")
    info = {"format_version": METADATA_FORMAT_VERSION, **metadata.info}
    entries = {
        LABELS_ENTRY: format_labels(metadata.labels).encode("utf-8"),
        PREPROCESS_ENTRY: _json_bytes(metadata.preprocess.to_dict()),
        INFO_ENTRY: _json_bytes(info),
    }
    buffer = io.BytesIO()
    buffer.write(model_bytes)
    # Mode "a" on bytes that are not a zip appends a new archive after them.
    with zipfile.ZipFile(buffer, mode="a", compression=zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=FIXED_ZIP_TIMESTAMP), data)
    return buffer.getvalue()


def read_metadata_bytes(data: bytes) -> ModelMetadata | None:
    """Read embedded metadata from model bytes; None when the model carries none."""
    return _read_archive(io.BytesIO(data))


def _read_archive(handle: IO[bytes]) -> ModelMetadata | None:
    try:
        archive = zipfile.ZipFile(handle)
    except zipfile.BadZipFile:
        return None
    with archive:
        names = set(archive.namelist())
        if LABELS_ENTRY not in names or PREPROCESS_ENTRY not in names:
            return None
        try:
            labels = parse_labels(archive.read(LABELS_ENTRY).decode("utf-8"))
            spec = PreprocessSpec.from_dict(json.loads(archive.read(PREPROCESS_ENTRY)))
            info = json.loads(archive.read(INFO_ENTRY)) if INFO_ENTRY in names else {}
        except (ValueError, TypeError, KeyError, zipfile.BadZipFile) as error:
            raise ModelError(f"embedded metadata is damaged ({error})") from error
    return ModelMetadata(labels=labels, preprocess=spec, info=info)


def read_metadata(path: str | os.PathLike) -> ModelMetadata | None:
    """Read embedded metadata from a `.tflite` file; None when it carries none.

    Opens the archive in place, so only its small directory and entries are read, not the whole model.
    """
    try:
        with open(path, "rb") as handle:
            return _read_archive(handle)
    except ModelError as error:
        raise ModelError(f"{path}: {error}") from error


def _json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode("utf-8")
