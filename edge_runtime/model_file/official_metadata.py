"""The official TFLite Metadata of a model file, read without TensorFlow.

Models from elsewhere (Coral, TensorFlow Hub, Kaggle, MediaPipe, Model Maker) describe themselves
in TFLite's own metadata format, the one MediaPipe, the TFLite Task Library, Android Studio and
Netron read: a `ModelMetadata` flatbuffer (file identifier "M001") kept in one of the model's
buffers, which the model's metadata table names "TFLITE_METADATA", and the files it refers to
(labels, score calibration) in a zip archive appended to the model.

Everything here comes from outside and is read within bounds (`limits`): the model's metadata
table through the checked reader of `flatbuffer_check`; the metadata flatbuffer, at most
`METADATA_FLATBUFFER_MAX_BYTES`, is verified against `METADATA_SCHEMA` (every table, string and
vector the generated code will follow) before `metadata_schema_generated` (flatc, from
metadata_schema.fbs) unpacks it; its associated files are read from the appended archive by
`bounded_zip`, within the labels and score calibration limits. Only what classification needs is
kept: the input's normalization and colour space, the output's labels, value range and score
calibration, and the model's name, version and description.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import struct
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import ModelError
from ..preprocess import Normalization
from .bounded_zip import BoundedArchive, open_archive
from .flatbuffer_check import SCALAR, SCALARS, STRING, STRINGS, TABLE, TABLES, UNION, Field, Table, verify
from .labels import parse_labels
from .limits import (ASSOCIATED_FILE, CALIBRATION, LABELS, METADATA_FLATBUFFER_MAX_BYTES, MODEL_METADATA_MAX_ENTRIES,
                     decode_text, size_text)

METADATA_BUFFER_NAME = b"TFLITE_METADATA"
METADATA_FILE_IDENTIFIER = b"M001"
# Buffer.offset is 0 or 1 for data kept inline in the flatbuffer; larger values point past it.
INLINE_BUFFER_OFFSET_MAX = 1
COLOR_SPACES = {0: "UNKNOWN", 1: "RGB", 2: "GRAYSCALE"}
SCORE_TRANSFORMATIONS = {0: "identity", 1: "log", 2: "inverse_logistic"}
# Sigmoid parameters per line of a score calibration file: scale, slope, offset[, min score].
CALIBRATION_FIELDS = (3, 4)
# Errors a damaged flatbuffer raises while it is read: offsets out of range, bad strings, bad unions.
PARSE_ERRORS = (IndexError, struct.error, ValueError, TypeError, AttributeError, UnicodeDecodeError,
                OverflowError, KeyError)

# The fields of TFLite's Model, Buffer and Metadata tables that `metadata_buffer` reads (schema.fbs ids).
MODEL_BUFFERS_SLOT, MODEL_METADATA_SLOT = 4, 6
BUFFER_DATA_SLOT, BUFFER_OFFSET_SLOT, BUFFER_SIZE_SLOT = 0, 1, 2
METADATA_NAME_SLOT, METADATA_BUFFER_SLOT = 0, 1
OFFSET_BYTES = 4

# metadata_schema.fbs (the copy `metadata_schema_generated` comes from), every table and field the
# generated object API reads: field ids, scalar sizes in bytes, and the tables that offsets lead to.
# tests/test_hostile_models.py checks it against the generated code, so a regenerated schema with
# new fields fails until they are added here.
METADATA_SCHEMA: dict[str, tuple[Field, ...]] = {
    "AssociatedFile": (Field(0, STRING), Field(1, STRING), Field(2, SCALAR, 1), Field(3, STRING), Field(4, STRING)),
    "FeatureProperties": (),
    "ImageSize": (Field(0, SCALAR, 4), Field(1, SCALAR, 4)),
    "ImageProperties": (Field(0, SCALAR, 1), Field(1, TABLE, table="ImageSize")),
    "AudioProperties": (Field(0, SCALAR, 4), Field(1, SCALAR, 4)),
    "BoundingBoxProperties": (Field(0, SCALARS, 4), Field(1, SCALAR, 1), Field(2, SCALAR, 1)),
    "ValueRange": (Field(0, SCALAR, 4), Field(1, SCALAR, 4)),
    "Content": (Field(0, SCALAR, 1),
                Field(1, UNION, union={1: "FeatureProperties", 2: "ImageProperties",
                                       3: "BoundingBoxProperties", 4: "AudioProperties"}),
                Field(2, TABLE, table="ValueRange")),
    "NormalizationOptions": (Field(0, SCALARS, 4), Field(1, SCALARS, 4)),
    "ScoreCalibrationOptions": (Field(0, SCALAR, 1), Field(1, SCALAR, 4)),
    "ScoreThresholdingOptions": (Field(0, SCALAR, 4),),
    "BertTokenizerOptions": (Field(0, TABLES, table="AssociatedFile"),),
    "SentencePieceTokenizerOptions": (Field(0, TABLES, table="AssociatedFile"),
                                      Field(1, TABLES, table="AssociatedFile")),
    "RegexTokenizerOptions": (Field(0, STRING), Field(1, TABLES, table="AssociatedFile")),
    "ProcessUnit": (Field(0, SCALAR, 1),
                    Field(1, UNION, union={1: "NormalizationOptions", 2: "ScoreCalibrationOptions",
                                           3: "ScoreThresholdingOptions", 4: "BertTokenizerOptions",
                                           5: "SentencePieceTokenizerOptions", 6: "RegexTokenizerOptions"})),
    "Stats": (Field(0, SCALARS, 4), Field(1, SCALARS, 4)),
    "TensorGroup": (Field(0, STRING), Field(1, STRINGS)),
    "TensorMetadata": (Field(0, STRING), Field(1, STRING), Field(2, STRINGS), Field(3, TABLE, table="Content"),
                       Field(4, TABLES, table="ProcessUnit"), Field(5, TABLE, table="Stats"),
                       Field(6, TABLES, table="AssociatedFile")),
    "CustomMetadata": (Field(0, STRING), Field(1, SCALARS, 1)),
    "SubGraphMetadata": (Field(0, STRING), Field(1, STRING), Field(2, TABLES, table="TensorMetadata"),
                         Field(3, TABLES, table="TensorMetadata"), Field(4, TABLES, table="AssociatedFile"),
                         Field(5, TABLES, table="ProcessUnit"), Field(6, TABLES, table="ProcessUnit"),
                         Field(7, TABLES, table="TensorGroup"), Field(8, TABLES, table="TensorGroup"),
                         Field(9, TABLES, table="CustomMetadata")),
    "ModelMetadata": (Field(0, STRING), Field(1, STRING), Field(2, STRING), Field(3, TABLES, table="SubGraphMetadata"),
                      Field(4, STRING), Field(5, STRING), Field(6, TABLES, table="AssociatedFile"), Field(7, STRING)),
}


@dataclasses.dataclass(frozen=True)
class SigmoidParameters:
    """One class's score calibration: scale / (1 + exp(-(slope * f(x) + offset)))."""

    scale: float
    slope: float
    offset: float
    min_score: float | None = None


@dataclasses.dataclass(frozen=True)
class ScoreCalibration:
    """The output's ScoreCalibrationOptions and its per-class parameters (from the associated file)."""

    transformation: str  # "identity", "log" or "inverse_logistic"
    default_score: float
    parameters: tuple[SigmoidParameters | None, ...]  # None: the class takes default_score
    file_name: str

    @functools.cached_property
    def _table(self) -> tuple[np.ndarray, ...]:
        """The parameters as arrays: calibrated?, scale, slope, offset, min score (-inf: none)."""
        rows = [(p is not None, p.scale, p.slope, p.offset,
                 -np.inf if p.min_score is None else p.min_score) if p is not None else (False, 0.0, 0.0, 0.0, 0.0)
                for p in self.parameters]
        return tuple(np.array(column, dtype=bool if i == 0 else np.float64) for i, column in enumerate(zip(*rows)))

    def apply(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated float32 scores, as the TFLite Task Library and MediaPipe compute them.

        Each class's score x becomes scale * sigmoid(slope * f(x) + offset), f the transformation;
        a class without parameters, or below its min score, gets the default score.
        """
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        calibrated, scale, slope, offset, min_score = self._table
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if self.transformation == "log":
                transformed = np.log(scores)
            elif self.transformation == "inverse_logistic":
                transformed = np.log(scores) - np.log1p(-scores)
            else:
                transformed = scores
            value = slope * transformed + offset
            # The sigmoid in the form that never overflows: exp of a non-positive number only.
            small = np.exp(-np.abs(value))
            sigmoid = np.where(value >= 0, 1.0 / (1.0 + small), small / (1.0 + small))
        use = calibrated & (scores >= min_score) & ~np.isnan(value)
        return np.where(use, scale * sigmoid, self.default_score).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class OfficialMetadata:
    """What the official TFLite metadata of a model says that classification needs."""

    name: str
    description: str
    version: str
    author: str
    min_parser_version: str
    color_space: str | None  # "RGB", "GRAYSCALE", "UNKNOWN"; None when the input has no ImageProperties
    normalization: Normalization | None
    labels: list[str] | None
    labels_file: str | None
    output_range: tuple[float, float] | None  # the output's stats (min, max), e.g. (0, 1) for probabilities
    score_calibration: ScoreCalibration | None
    associated_files: tuple[str, ...]  # every file the metadata names

    def summary(self) -> dict[str, Any]:
        """A JSON-ready account for `--info`."""
        return {
            "name": self.name, "description": self.description, "version": self.version,
            "author": self.author, "min_parser_version": self.min_parser_version,
            "color_space": self.color_space,
            "normalization": ({"mean": list(self.normalization.mean), "std": list(self.normalization.std)}
                              if self.normalization else None),
            "labels_file": self.labels_file,
            "output_range": list(self.output_range) if self.output_range else None,
            "score_calibration": (self.score_calibration.transformation if self.score_calibration else None),
            "associated_files": list(self.associated_files),
        }


def carries_official_metadata(model_bytes: bytes) -> bool:
    """A cheap first look: False when the buffer name does not even occur in the file."""
    return METADATA_BUFFER_NAME in model_bytes


def metadata_buffer(model_bytes: bytes) -> bytes | None:
    """The raw `TFLITE_METADATA` buffer of a model flatbuffer; None when the model has none.

    Every offset followed is bounds-checked (FlatbufferError, a ValueError, when one leads outside
    the model); a buffer over `METADATA_FLATBUFFER_MAX_BYTES` is refused (ModelError) before it is copied.
    """
    if not carries_official_metadata(model_bytes):
        return None
    model = Table.root(model_bytes)
    metadata_start, metadata_count = model.vector(MODEL_METADATA_SLOT, OFFSET_BYTES)
    if metadata_count > MODEL_METADATA_MAX_ENTRIES:
        raise ValueError(f"its metadata table has {metadata_count:,} entries, over the limit of "
                         f"{MODEL_METADATA_MAX_ENTRIES:,}")
    for position in range(metadata_count):
        entry = model.table_at(metadata_start + OFFSET_BYTES * position)
        if entry.string(METADATA_NAME_SLOT) != METADATA_BUFFER_NAME:
            continue
        index = entry.scalar(METADATA_BUFFER_SLOT, "<I")
        buffers_start, buffer_count = model.vector(MODEL_BUFFERS_SLOT, OFFSET_BYTES)
        if not 0 <= index < buffer_count:
            raise ValueError(f"its metadata entry points to buffer {index} of {buffer_count}")
        buffer = model.table_at(buffers_start + OFFSET_BYTES * index)
        offset = buffer.scalar(BUFFER_OFFSET_SLOT, "<Q")
        if offset > INLINE_BUFFER_OFFSET_MAX:
            size = buffer.scalar(BUFFER_SIZE_SLOT, "<Q")
            _check_metadata_size(size)
            if offset + size > len(model_bytes):
                raise ValueError(f"its metadata buffer ({size:,} bytes at byte {offset:,}) lies outside "
                                 f"the {len(model_bytes):,}-byte file")
            return bytes(model_bytes[offset:offset + size])
        data_start, data_size = buffer.vector(BUFFER_DATA_SLOT, 1)
        _check_metadata_size(data_size)
        return bytes(model_bytes[data_start:data_start + data_size])
    return None


def _check_metadata_size(size: int) -> None:
    if size > METADATA_FLATBUFFER_MAX_BYTES:
        raise ModelError(f"the TFLite metadata buffer is {size_text(size)}, over the limit of "
                         f"{size_text(METADATA_FLATBUFFER_MAX_BYTES)}")


def read_official_metadata(model_bytes: bytes, name: str = "model") -> OfficialMetadata | None:
    """The official TFLite metadata of a model's bytes; None when it carries none.

    A damaged metadata buffer, a file the metadata names that is missing from the model's archive,
    or anything over the limits of `limits` raises ModelError with one line naming `name` and the reason.
    """
    try:
        raw = metadata_buffer(model_bytes)
    except PARSE_ERRORS as error:
        raise ModelError(f"{name}: the TFLite metadata is damaged ({_reason(error)})") from error
    except ModelError as error:
        raise ModelError(f"{name}: {error}") from error
    if raw is None:
        return None
    if len(raw) < 8 or raw[4:8] != METADATA_FILE_IDENTIFIER:
        raise ModelError(f"{name}: the TFLite metadata is damaged (its buffer lacks the "
                         f"'{METADATA_FILE_IDENTIFIER.decode()}' identifier)")
    # No readable appended archive is fine unless the metadata names a file; one over the limits is refused.
    try:
        archive = open_archive(io.BytesIO(model_bytes))
    except ModelError as error:
        raise ModelError(f"{name}: {error}") from error
    try:
        return parse_metadata(raw, _file_reader(archive))
    except ModelError as error:
        raise ModelError(f"{name}: {error}") from error
    except PARSE_ERRORS as error:
        raise ModelError(f"{name}: the TFLite metadata is damaged ({_reason(error)})") from error
    except MissingFileError as error:
        raise ModelError(f"{name}: the TFLite metadata names {error.args[0]!r}, which the model's "
                         "archive does not contain") from error
    finally:
        if archive is not None:
            archive.close()


class MissingFileError(Exception):
    """An associated file the metadata names is not in the model's appended archive."""


# Reads one associated file by name, raising MissingFileError when it is absent.
FileReader = Callable[[str], bytes]


def _file_reader(archive: BoundedArchive | None) -> FileReader:
    """A FileReader over the model's appended archive (None: the model has none), within
    `ASSOCIATED_FILE_MAX_BYTES`; what is read from it is then held to its own kind's limits."""
    def read(name: str) -> bytes:
        if archive is None:
            raise MissingFileError(name)
        try:
            return archive.read(name, ASSOCIATED_FILE)
        except KeyError as error:
            raise MissingFileError(name) from error

    return read


def parse_metadata(raw: bytes, read_file: FileReader) -> OfficialMetadata:
    """Read a `ModelMetadata` flatbuffer; `read_file` returns one of the model's associated files.

    The buffer is verified first (FlatbufferError, a ValueError, when it is malformed or over the
    limits); an associated file over its limit raises ModelError from `read_file`.
    """
    from . import metadata_schema_generated as schema

    _check_metadata_size(len(raw))
    verify(raw, METADATA_SCHEMA, "ModelMetadata", METADATA_FILE_IDENTIFIER)
    metadata = schema.ModelMetadataT.InitFromPackedBuf(raw, 0)
    subgraphs = metadata.subgraphMetadata or []
    if not subgraphs:
        raise ValueError("it describes no subgraph")
    subgraph = subgraphs[0]
    inputs = subgraph.inputTensorMetadata or []
    outputs = subgraph.outputTensorMetadata or []
    image = inputs[0] if inputs else None
    scores = outputs[0] if outputs else None

    color_space, normalization = None, None
    if image is not None:
        content = image.content
        if content is not None and content.contentPropertiesType == schema.ContentProperties.ImageProperties:
            color_space = COLOR_SPACES.get(content.contentProperties.colorSpace, "UNKNOWN")
        for unit in image.processUnits or []:
            if unit.optionsType == schema.ProcessUnitOptions.NormalizationOptions:
                normalization = Normalization(mean=_floats(unit.options.mean), std=_floats(unit.options.std))
                normalization.validate()

    labels, labels_file, output_range, calibration = None, None, None, None
    if scores is not None:
        label_files = [file for file in scores.associatedFiles or []
                       if file.type == schema.AssociatedFileType.TENSOR_AXIS_LABELS]
        if label_files:
            # The file without a locale is the default; localized copies come beside it.
            chosen = next((file for file in label_files if not file.locale), label_files[0])
            labels_file = _text(chosen.name)
            labels = parse_labels(decode_text(read_file(labels_file), LABELS, f"embedded {labels_file}"))
        stats = scores.stats
        if stats is not None and stats.min is not None and stats.max is not None and len(stats.min) and len(stats.max):
            output_range = (float(stats.min[0]), float(stats.max[0]))
        for unit in scores.processUnits or []:
            if unit.optionsType == schema.ProcessUnitOptions.ScoreCalibrationOptions:
                calibration = _score_calibration(unit.options, scores.associatedFiles or [], read_file, schema)

    return OfficialMetadata(
        name=_text(metadata.name), description=_text(metadata.description), version=_text(metadata.version),
        author=_text(metadata.author), min_parser_version=_text(metadata.minParserVersion),
        color_space=color_space, normalization=normalization, labels=labels, labels_file=labels_file,
        output_range=output_range, score_calibration=calibration,
        associated_files=tuple(_all_file_names(metadata)))


def _score_calibration(options: Any, associated: Sequence[Any], read_file: FileReader,
                       schema: Any) -> ScoreCalibration:
    calibration_files = [file for file in associated
                         if file.type == schema.AssociatedFileType.TENSOR_AXIS_SCORE_CALIBRATION]
    if not calibration_files:
        raise ValueError("score calibration without its TENSOR_AXIS_SCORE_CALIBRATION file")
    file_name = _text(calibration_files[0].name)
    parameters: list[SigmoidParameters | None] = []
    for line in decode_text(read_file(file_name), CALIBRATION, f"embedded {file_name}").splitlines():
        if not line.strip():
            parameters.append(None)
            continue
        values = [float(value) for value in line.split(",")]
        if len(values) not in CALIBRATION_FIELDS:
            raise ValueError(f"score calibration line {line!r} has {len(values)} values, not 3 or 4")
        parameters.append(SigmoidParameters(*values))
    transformation = SCORE_TRANSFORMATIONS.get(options.scoreTransformation)
    if transformation is None:
        raise ValueError(f"unknown score transformation {options.scoreTransformation}")
    return ScoreCalibration(transformation=transformation, default_score=float(options.defaultScore),
                            parameters=tuple(parameters), file_name=file_name)


def _all_file_names(metadata: Any) -> list[str]:
    names = [_text(file.name) for file in metadata.associatedFiles or []]
    for subgraph in metadata.subgraphMetadata or []:
        for tensor in (subgraph.inputTensorMetadata or []) + (subgraph.outputTensorMetadata or []):
            names.extend(_text(file.name) for file in tensor.associatedFiles or [])
        names.extend(_text(file.name) for file in subgraph.associatedFiles or [])
    return names


def _floats(values: Any) -> tuple[float, ...]:
    if values is None or len(values) == 0:
        raise ValueError("normalization options without values")
    return tuple(float(value) for value in values)


def _text(value: bytes | str | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _reason(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
