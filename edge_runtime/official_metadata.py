"""The official TFLite Metadata of a model file, read without TensorFlow.

Models from elsewhere (Coral, TensorFlow Hub, Kaggle, MediaPipe, Model Maker) describe themselves
in TFLite's own metadata format, the one MediaPipe, the TFLite Task Library, Android Studio and
Netron read: a `ModelMetadata` flatbuffer (file identifier "M001") kept in one of the model's
buffers, which the model's metadata table names "TFLITE_METADATA", and the files it refers to
(labels, score calibration) in a zip archive appended to the model.

The model's tables are read with the `tflite` package (code flatc generated from TFLite's
schema.fbs); the metadata flatbuffer with `metadata_schema_generated` (flatc, from
metadata_schema.fbs). Both are pure Python over the `flatbuffers` runtime. Only what
classification needs is kept: the input's normalization and colour space, the output's labels,
value range and score calibration, and the model's name, version and description.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import struct
import zipfile
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ModelError
from .labels import parse_labels
from .preprocess import Normalization

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
    """The raw `TFLITE_METADATA` buffer of a model flatbuffer; None when the model has none."""
    if not carries_official_metadata(model_bytes):
        return None  # spares the import of the model schema for the many models without metadata
    import tflite  # imported here: ~0.1 s, paid only by models that carry the official metadata

    model = tflite.Model.GetRootAs(model_bytes, 0)
    for position in range(model.MetadataLength()):
        entry = model.Metadata(position)
        if entry.Name() != METADATA_BUFFER_NAME:
            continue
        index = entry.Buffer()
        if not 0 <= index < model.BuffersLength():
            raise ValueError(f"its metadata entry points to buffer {index} of {model.BuffersLength()}")
        buffer = model.Buffers(index)
        if buffer.Offset() > INLINE_BUFFER_OFFSET_MAX:
            return bytes(model_bytes[buffer.Offset():buffer.Offset() + buffer.Size()])
        return buffer.DataAsNumpy().tobytes() if buffer.DataLength() else b""
    return None


def read_official_metadata(model_bytes: bytes, name: str = "model") -> OfficialMetadata | None:
    """The official TFLite metadata of a model's bytes; None when it carries none.

    A damaged metadata buffer, or a file the metadata names that is missing from the model's
    archive, raises ModelError with one line naming `name` and the reason.
    """
    try:
        raw = metadata_buffer(model_bytes)
    except PARSE_ERRORS as error:
        raise ModelError(f"{name}: the TFLite metadata is damaged ({_reason(error)})") from error
    if raw is None:
        return None
    if len(raw) < 8 or raw[4:8] != METADATA_FILE_IDENTIFIER:
        raise ModelError(f"{name}: the TFLite metadata is damaged (its buffer lacks the "
                         f"'{METADATA_FILE_IDENTIFIER.decode()}' identifier)")
    try:
        archive: zipfile.ZipFile | None = zipfile.ZipFile(io.BytesIO(model_bytes))
    except (zipfile.BadZipFile, OSError, ValueError):
        archive = None  # no (readable) appended files: fine unless the metadata names one
    try:
        return parse_metadata(raw, _file_reader(archive))
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


FileReader = Callable[[str], bytes]


def _file_reader(archive: zipfile.ZipFile | None) -> FileReader:
    """A function that reads one associated file by name, raising MissingFileError when absent."""
    def read(name: str) -> bytes:
        if archive is None:
            raise MissingFileError(name)
        try:
            return archive.read(name)
        except KeyError as error:
            raise MissingFileError(name) from error
        except (zipfile.BadZipFile, OSError) as error:
            raise ValueError(f"associated file {name!r} cannot be read ({error})") from error

    return read


def parse_metadata(raw: bytes, read_file: FileReader) -> OfficialMetadata:
    """Read a `ModelMetadata` flatbuffer; `read_file` returns one of the model's associated files."""
    from . import metadata_schema_generated as schema

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
            labels = parse_labels(read_file(labels_file).decode("utf-8"))
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
    for line in read_file(file_name).decode("utf-8").splitlines():
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
