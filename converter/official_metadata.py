"""The official TFLite metadata of every exported model: what MediaPipe, the TFLite Task Library,
Android Studio's ML binding and Netron read.

A `ModelMetadata` flatbuffer (identifier "M001") says the model's name, version and description;
the input's colour space (RGB) and normalization ((pixel - mean) / std, the same rule as our own
`preprocess.json`); the output's value range (probabilities in [0, 1]) and its labels, as the
TENSOR_AXIS_LABELS file `labels.txt` of the zip archive that `edge_runtime.model_file.metadata` appends.
It goes into a buffer of the model named "TFLITE_METADATA" in the model's metadata table.

Written with the object API flatc generated from metadata_schema.fbs
(`edge_runtime.model_file.metadata_schema_generated`) and TensorFlow's own `flatbuffer_utils` for the model.
The maintained writers do not install beside TensorFlow 2.21: tflite-support 0.4.4 pins
protobuf < 4 (TensorFlow needs >= 6.31), MediaPipe 0.10.x pins protobuf < 5 and numpy < 2, and
the `metadata_writers` of MediaPipe 1.x fail to import from the wheel (their native
`mediapipe.tasks.cc` module is not shipped). Our `preprocess.json` stays for what the official
schema cannot say: crop and resize policy, resampling, EXIF orientation, the background colour.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from edge_runtime.errors import ModelError
from edge_runtime.model_file.flatbuffer_check import verify
from edge_runtime.model_file.limits import (ARCHIVE_MAX_ENTRIES, ASSOCIATED_FILE, LABELS, METADATA_FLATBUFFER_MAX_BYTES,
                                            check_bytes, check_text, size_text)
from edge_runtime.model_file.metadata import INFO_ENTRY, LABELS_ENTRY, PREPROCESS_ENTRY, append_stored_files
from edge_runtime.model_file.official_metadata import (METADATA_BUFFER_NAME, METADATA_FILE_IDENTIFIER, METADATA_SCHEMA,
                                                       read_official_metadata)
from edge_runtime.preprocess import PIXEL_SCALE, Normalization, PreprocessSpec

# Every field written here exists since version 1.0.0 of the metadata schema.
MIN_PARSER_VERSION = "1.0.0"
AUTHOR = "edge-image-toolkit"
INPUT_NAME = "image"
OUTPUT_NAME = "probability"
PROBABILITY_RANGE = (0.0, 1.0)
INITIAL_BUILDER_BYTES = 1024
# The schema stores mean and std as float32: a read-back matches to float32's precision.
FLOAT32_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class ModelDescription:
    """What the official metadata says about one exported model."""

    name: str
    description: str
    version: str
    labels: list[str]
    width: int
    height: int
    normalization: Normalization  # the input's (pixel - mean) / std
    labels_file: str = LABELS_ENTRY  # the name of the labels in the appended archive


def spec_normalization(spec: PreprocessSpec) -> Normalization:
    """Our x * scale + offset as the official (pixel - mean) / std: mean -offset / scale, std 1 / scale."""
    if spec.scale == 0.0:
        raise ModelError("the preprocessing scale is 0: no normalization can express it")
    if spec.scale == 1.0 / PIXEL_SCALE and spec.offset == 0.0:
        return Normalization(mean=(0.0,), std=(PIXEL_SCALE,))  # exactly x / 255, not 1 / (1/255)
    return Normalization(mean=(-spec.offset / spec.scale,), std=(1.0 / spec.scale,))


def metadata_flatbuffer(model: ModelDescription) -> bytes:
    """The `ModelMetadata` flatbuffer (identifier M001) of an image classifier exported here.

    Refused (ModelError) over the limits the readers apply: the labels it describes, its own size.
    """
    import flatbuffers

    from edge_runtime.model_file import metadata_schema_generated as schema

    normalization = model.normalization
    lowest = [(0.0 - mean) / std for mean, std in zip(normalization.mean, normalization.std)]
    highest = [(PIXEL_SCALE - mean) / std for mean, std in zip(normalization.mean, normalization.std)]

    image = schema.TensorMetadataT()
    image.name = INPUT_NAME
    image.description = (f"Input image to be classified: {model.width}x{model.height} RGB, "
                         f"{normalization.describe()}.")
    image.content = schema.ContentT()
    image.content.contentPropertiesType = schema.ContentProperties.ImageProperties
    image.content.contentProperties = schema.ImagePropertiesT()
    image.content.contentProperties.colorSpace = schema.ColorSpaceType.RGB
    image.content.contentProperties.defaultSize = schema.ImageSizeT()
    image.content.contentProperties.defaultSize.width = model.width
    image.content.contentProperties.defaultSize.height = model.height
    unit = schema.ProcessUnitT()
    unit.optionsType = schema.ProcessUnitOptions.NormalizationOptions
    unit.options = schema.NormalizationOptionsT()
    unit.options.mean = list(normalization.mean)
    unit.options.std = list(normalization.std)
    image.processUnits = [unit]
    image.stats = _stats(lowest, highest)

    scores = schema.TensorMetadataT()
    scores.name = OUTPUT_NAME
    scores.description = f"Probabilities of the {len(model.labels)} classes, in the order of {model.labels_file}."
    scores.content = schema.ContentT()
    scores.content.contentPropertiesType = schema.ContentProperties.FeatureProperties
    scores.content.contentProperties = schema.FeaturePropertiesT()
    scores.stats = _stats([PROBABILITY_RANGE[0]], [PROBABILITY_RANGE[1]])
    scores.associatedFiles = [_file(schema, model.labels_file, "Class labels, one per line, in class-index order.",
                                    schema.AssociatedFileType.TENSOR_AXIS_LABELS)]

    subgraph = schema.SubGraphMetadataT()
    subgraph.inputTensorMetadata = [image]
    subgraph.outputTensorMetadata = [scores]

    metadata = schema.ModelMetadataT()
    metadata.name = model.name
    metadata.description = model.description
    metadata.version = model.version
    metadata.author = AUTHOR
    metadata.minParserVersion = MIN_PARSER_VERSION
    metadata.subgraphMetadata = [subgraph]
    # Our own files in the same archive, named so that tools listing associated files show them.
    metadata.associatedFiles = [
        _file(schema, PREPROCESS_ENTRY, "edge-image-toolkit preprocessing: size, crop, resampling, EXIF, "
              "background, scaling.", schema.AssociatedFileType.DESCRIPTIONS),
        _file(schema, INFO_ENTRY, "edge-image-toolkit conversion record: variant, source model, calibration.",
              schema.AssociatedFileType.DESCRIPTIONS),
    ]
    labels_text = "".join(f"{label}\n" for label in model.labels)
    check_bytes(labels_text.encode("utf-8"), LABELS, f"refusing to write metadata: {model.labels_file}")
    check_text(labels_text, LABELS, f"refusing to write metadata: {model.labels_file}")
    builder = flatbuffers.Builder(INITIAL_BUILDER_BYTES)
    builder.Finish(metadata.Pack(builder), file_identifier=METADATA_FILE_IDENTIFIER)
    raw = bytes(builder.Output())
    if len(raw) > METADATA_FLATBUFFER_MAX_BYTES:
        raise ModelError(f"refusing to write metadata: the TFLite metadata would be {size_text(len(raw))}, "
                         f"over the limit of {size_text(METADATA_FLATBUFFER_MAX_BYTES)}")
    verify(raw, METADATA_SCHEMA, "ModelMetadata", METADATA_FILE_IDENTIFIER)  # what every reader checks first
    return raw


def _stats(low: list[float], high: list[float]) -> Any:
    from edge_runtime.model_file import metadata_schema_generated as schema

    stats = schema.StatsT()
    stats.min = [float(value) for value in low]
    stats.max = [float(value) for value in high]
    return stats


def _file(schema: Any, name: str, description: str, kind: int) -> Any:
    associated = schema.AssociatedFileT()
    associated.name = name
    associated.description = description
    associated.type = kind
    return associated


def attach_metadata_buffer(model_bytes: bytes, metadata: bytes) -> bytes:
    """The model with `metadata` added as its TFLITE_METADATA buffer (replacing an earlier one)."""
    from tensorflow.lite.python import schema_py_generated as tflite_schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_bytes))
    buffer = tflite_schema.BufferT()
    buffer.data = np.frombuffer(metadata, dtype=np.uint8)
    entries = [entry for entry in (model.metadata or []) if _name(entry.name) != METADATA_BUFFER_NAME]
    model.buffers.append(buffer)
    entry = tflite_schema.MetadataT()
    entry.name = METADATA_BUFFER_NAME.decode()
    entry.buffer = len(model.buffers) - 1
    model.metadata = entries + [entry]
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def append_files(model_bytes: bytes, files: dict[str, bytes]) -> bytes:
    """The model with `files` in a zip archive appended, where the official metadata's readers look
    for associated files (for a model that carries none yet; our exports use `embed_metadata`).
    Refuses (ModelError) more files, or larger ones, than the readers accept."""
    if len(files) > ARCHIVE_MAX_ENTRIES:
        raise ModelError(f"refusing to append {len(files)} files: the limit is {ARCHIVE_MAX_ENTRIES}")
    for name, data in files.items():
        check_bytes(data, ASSOCIATED_FILE, f"refusing to append {name}")
    return append_stored_files(model_bytes, files)


def _name(value: bytes | str | None) -> bytes:
    if value is None:
        return b""
    return value if isinstance(value, bytes) else value.encode("utf-8")


def check_official_metadata(model_bytes: bytes, model: ModelDescription, name: str) -> None:
    """Read a finished export back through the official schema: its labels and normalization must be ours."""
    official = read_official_metadata(model_bytes, name)
    expected = model.normalization
    if official is None:
        raise ModelError(f"{name}: the export carries no official TFLite metadata")
    if official.labels != model.labels:
        raise ModelError(f"{name}: the official TFLite metadata's labels differ from the model's labels")
    if official.normalization is None or not (
            np.allclose(official.normalization.mean, expected.mean, rtol=FLOAT32_TOLERANCE)
            and np.allclose(official.normalization.std, expected.std, rtol=FLOAT32_TOLERANCE)):
        raise ModelError(f"{name}: the official TFLite metadata's normalization {official.normalization} "
                         f"is not {expected}")
