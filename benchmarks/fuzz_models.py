"""Fuzz everything edge_runtime reads from a .tflite file (issue 14): `make fuzz`.

Mutates valid models, ours (converter-style: official metadata plus our labels, preprocess.json
and model_info.json) and third-party-style ones (official metadata with labels and a score
calibration file, stored or deflated), and reads each through what every path that opens a model
reads: `read_metadata` on the file and `read_official_metadata` on its bytes, then the summary
`--info` prints. A mutant the readers accept is then opened as edge-classify opens it: a
Classifier is built (the interpreter loads the model) and classifies one image, which invokes it,
so a graph damaged where only invoke notices is covered too. A case passes when the readers
return or raise ModelError (one line), and then the Classifier returns scores or raises
ModelError (one line); anything else is a traceback.

Seeds: a Conv2D-GlobalAveragePooling-Dense network (ours, official, official-deflated), and the
documented CNN's layer kinds in miniature, Conv2D-MaxPool-Flatten-Dense (ours-flatten,
official-flatten, and ours-flatten-int8): its resizable batch makes the converter compute the
Reshape's shape at run time (SHAPE, STRIDED_SLICE, PACK of a constant), and its int8 form carries
scales and zero points that the XNNPACK delegate checks at the first invoke.

Mutations: byte flips, interesting integers, truncations, splices, flatbuffer offsets out of range
(in the TFLITE_METADATA buffer and the model's own tables), central-directory edits and lies about
sizes, deflate bombs, archives with many entries, hostile JSON and labels; and graph writes, which
rewrite a value only the interpreter reads, found through flatbuffer_check's bounds-checked reader
of the model's tables: an element of a small constant buffer (shape constants, slice bounds,
biases), a quantization scale or zero point, a tensor's shape or shape signature, an operator's
tensor index or a field of its options. Hypothesis draws them, from a fixed seed.

The cases run in a worker process with an address-space cap (so a runaway allocation fails as a
MemoryError, counted as a traceback) and a per-case time cap (a case over it counts as a hang);
the parent builds the seed models (TensorFlow), runs the worker, prints and records the figures.
A case that kills the worker (a crash in the interpreter's native code) is counted as a crash, its
model is kept in the record, and a new worker runs the cases left, drawn from a seed derived from
the run's seed and the number of the restart (so the same seed still draws the same run):

    .venv/bin/python benchmarks/fuzz_models.py --cases 10000 --record artifacts/fuzz.json

tests/test_fuzz_models.py runs the same strategy for a few seconds in the default suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import faulthandler
import functools
import io
import json
import math
import os
import platform
import resource
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, Callable

if __package__ in (None, ""):  # run as a script: the repository root is one folder up
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.bench_runtime import cpu_model  # noqa: E402
from edge_runtime.classify import Classifier  # noqa: E402
from edge_runtime.errors import ModelError  # noqa: E402
from edge_runtime.info import describe_calibration  # noqa: E402
from edge_runtime.model_file.flatbuffer_check import (FIELD_SLOT_BYTES, SOFFSET, UOFFSET,  # noqa: E402
                                                      VTABLE_HEADER_BYTES, Table)
from edge_runtime.model_file.limits import ARCHIVE_MAX_ENTRIES, LABELS_MAX_BYTES, LABELS_MAX_LINES, MIB  # noqa: E402
from edge_runtime.model_file.metadata import INFO_ENTRY, LABELS_ENTRY, PREPROCESS_ENTRY, read_metadata  # noqa: E402
from edge_runtime.model_file.official_metadata import read_official_metadata  # noqa: E402

DEFAULT_CASES = 10_000
DEFAULT_SEED = 14
# A case slower than this counts as a hang (the slowest valid read measured is a few ms).
DEFAULT_TIME_CAP_S = 2.0
# Address space the worker may add after loading the seeds: a case that needs more fails.
DEFAULT_ADDRESS_SPACE_MIB = 512
# The peak resident memory the worker may add above what it holds before the first case.
DEFAULT_MEMORY_CAP_MIB = 64
# The worker is stopped (and the run counted as hung) when the whole run takes longer than this.
WORKER_SECONDS_PER_CASE = 0.5
WORKER_MIN_TIMEOUT_S = 120
KEPT_FAILURES = 5
KEPT_MODEL_BYTES = 64 * 1024  # a failed case's model is kept whole up to this size (the seeds are a few KiB)
KEPT_HEAD_BYTES = 64
# After a case kills its worker (a crash in native code), the parent starts another for the cases left, at
# most this many times a run.
MAX_WORKER_RESTARTS = 20
PROGRESS_FILE = "progress.json"
CASE_FILE = "case.tflite"
# The image a mutant is classified on: one grey picture of the model's input size.
PROBE_PIXEL = 128
# What became of a case (`try_model`): the readers refused it, or they accepted it and then the
# interpreter refused to load it, loaded it but failed to run it, or ran it.
REFUSED, LOAD_REFUSED, INVOKE_FAILED, RAN = "refused", "refused at load", "failed at invoke", "ran"

LABELS = ["cat", "dog", "bird"]
CALIBRATION_FILE = "calibration.csv"
CALIBRATION_TEXT = b"1.0,2.0,-1.0\n\n0.5,1.0,0.0,0.1\n"
SIDE = 16
CALIBRATION_IMAGES = 8  # representative images of the int8 seed's conversion (random pixels: the file matters)
FIXED_DATE = (1980, 1, 1, 0, 0, 0)
# Zip records, written field by field so that the tests can make them lie.
LOCAL_HEADER = struct.Struct("<4s5H3L2H")
CENTRAL_HEADER = struct.Struct("<4s6H3L5H2L")
END_RECORD = struct.Struct("<4s4H2LH")
ZIP_VERSION = 20
DOS_DATE = (0, 33)  # 00:00, 1 January 1980
RAW_DEFLATE_BITS = -15
FINAL_EMPTY_DEFLATE_BLOCK = b"\x03\x00"
BOMB_BLOCK_BYTES = 1 * MIB
FLOAT32_MAX = float(np.finfo(np.float32).max)
FLOAT32_TINY = float(np.finfo(np.float32).smallest_subnormal)
INTERESTING = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0x8000, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF,
               (1 << 63) - 1, (1 << 64) - 1)


# --- zip archives written byte by byte ----------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RawEntry:
    """One archive entry as written: its stored bytes and what its headers declare (which may lie)."""

    name: str
    payload: bytes  # the bytes as stored (deflated for ZIP_DEFLATED)
    method: int
    crc: int
    file_size: int  # the declared uncompressed size
    compress_size: int | None = None  # the declared stored size; None: the payload's true length
    flags: int = 0


def raw_entry(name: str, data: bytes, method: int = zipfile.ZIP_STORED) -> RawEntry:
    """An honest entry holding `data`."""
    if method == zipfile.ZIP_DEFLATED:
        compressor = zlib.compressobj(9, zlib.DEFLATED, RAW_DEFLATE_BITS)
        payload = compressor.compress(data) + compressor.flush()
    else:
        payload = data
    return RawEntry(name, payload, method, zlib.crc32(data), len(data))


def zip_archive(entries: list[RawEntry], base_offset: int, count: int | None = None) -> bytes:
    """A zip archive to append after `base_offset` bytes; `count` overrides the end record's entry count."""
    local, central = bytearray(), bytearray()
    for entry in entries:
        name = entry.name.encode("utf-8")
        declared = len(entry.payload) if entry.compress_size is None else entry.compress_size
        offset = base_offset + len(local)
        local += LOCAL_HEADER.pack(b"PK\x03\x04", ZIP_VERSION, entry.flags, entry.method, *DOS_DATE,
                                   entry.crc, declared & 0xFFFFFFFF, entry.file_size & 0xFFFFFFFF, len(name), 0)
        local += name + entry.payload
        central += CENTRAL_HEADER.pack(b"PK\x01\x02", ZIP_VERSION, ZIP_VERSION, entry.flags, entry.method, *DOS_DATE,
                                       entry.crc, declared & 0xFFFFFFFF, entry.file_size & 0xFFFFFFFF, len(name),
                                       0, 0, 0, 0, 0, offset & 0xFFFFFFFF)
        central += name
    total = len(entries) if count is None else count
    end = END_RECORD.pack(b"PK\x05\x06", 0, 0, total & 0xFFFF, total & 0xFFFF, len(central),
                          (base_offset + len(local)) & 0xFFFFFFFF, 0)
    return bytes(local + central + end)


@functools.lru_cache(maxsize=4)
def deflate_bomb(inflated_size: int) -> bytes:
    """A raw deflate stream that inflates to `inflated_size` zero bytes (a multiple of 1 MiB), built
    without inflating it: one fully flushed 1 MiB block repeated, then an empty final block."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, RAW_DEFLATE_BITS)
    block = compressor.compress(bytes(BOMB_BLOCK_BYTES)) + compressor.flush(zlib.Z_FULL_FLUSH)
    return block * (inflated_size // BOMB_BLOCK_BYTES) + FINAL_EMPTY_DEFLATE_BLOCK


def bomb_entry(name: str, inflated_size: int, declared_size: int | None = None) -> RawEntry:
    """A deflate bomb named `name`: honest about its size unless `declared_size` is given (a lie).
    Its CRC is left 0: readers must refuse it long before a CRC could be checked."""
    payload = deflate_bomb(inflated_size)
    return RawEntry(name, payload, zipfile.ZIP_DEFLATED, 0,
                    inflated_size if declared_size is None else declared_size)


# --- seed models ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Seed:
    """A valid model file, and its parts for mutations that rebuild its archive."""

    name: str
    data: bytes  # the model file as written
    prefix: bytes  # the flatbuffer before the appended archive
    entries: tuple[RawEntry, ...]

    def rebuilt(self, entries: list[RawEntry], count: int | None = None) -> bytes:
        return self.prefix + zip_archive(entries, len(self.prefix), count)

    @property
    def metadata_span(self) -> tuple[int, int]:
        """Where the TFLITE_METADATA flatbuffer lies (it starts 4 bytes before its 'M001' identifier)."""
        start = self.prefix.index(b"M001") - 4
        return start, start + int.from_bytes(self.prefix[start - 4:start], "little")

    @functools.cached_property
    def graph(self) -> dict[str, tuple[GraphValue, ...]]:
        """The values of its graph that only the interpreter reads, by kind (`graph_values`)."""
        found: dict[str, list[GraphValue]] = {}
        for value in graph_values(self.prefix):
            found.setdefault(value.kind, []).append(value)
        return {kind: tuple(values) for kind, values in sorted(found.items())}


def _tiny_tflite() -> bytes:
    """An untrained 16x16 RGB classifier of three classes as float32 TFLite (what matters is the file).

    TensorFlow is imported and run as edge-train and edge-convert run it: its C++ start-up lines
    (CUDA probing, a cuInit error on a machine without a GPU) and the converter's logs go to the
    debug log, not the terminal.
    """
    from trainer.tensorflow_env import import_tensorflow, native_output_to_log

    tf = import_tensorflow("make fuzz")
    with native_output_to_log():
        network = _seed_network(tf, tf.keras.layers.GlobalAveragePooling2D())
        return tf.lite.TFLiteConverter.from_keras_model(network).convert()


def _seed_network(tf: Any, *middle: Any) -> Any:
    """An untrained Conv2D(4) -> `middle` layers -> Dense softmax network on SIDE x SIDE RGB, seed 0."""
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((SIDE, SIDE, 3))
    x = tf.keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    for layer in middle:
        x = layer(x)
    outputs = tf.keras.layers.Dense(len(LABELS), activation="softmax")(x)
    return tf.keras.Model(inputs, outputs)


def _flatten_tflite() -> tuple[bytes, bytes]:
    """The documented CNN's layer kinds in miniature (Conv2D-MaxPool-Flatten-Dense), untrained, as
    float32 and as full-int8 TFLite.

    Its batch dimension is resizable, so the converter turns Flatten into SHAPE, STRIDED_SLICE and
    PACK of a constant (the flattened size) feeding RESHAPE: a shape computed when the model runs,
    which only invoke checks. The int8 form adds scales and zero points, which the XNNPACK delegate
    checks when it prepares that dynamic part at the first invoke.
    """
    from trainer.tensorflow_env import import_tensorflow, native_output_to_log

    tf = import_tensorflow("make fuzz")
    with native_output_to_log():
        network = _seed_network(tf, tf.keras.layers.MaxPooling2D(), tf.keras.layers.Flatten())
        float_model = bytes(tf.lite.TFLiteConverter.from_keras_model(network).convert())
        pixels = np.random.default_rng(0).random((CALIBRATION_IMAGES, 1, SIDE, SIDE, 3), dtype=np.float32)
        converter = tf.lite.TFLiteConverter.from_keras_model(network)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([image] for image in pixels)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
        with warnings.catch_warnings():  # the int8 input's statistics come from the calibration, as intended
            warnings.filterwarnings("ignore", "Statistics for quantized inputs", UserWarning)
            return float_model, bytes(converter.convert())


def _with_score_calibration(raw: bytes) -> bytes:
    """The metadata flatbuffer `raw` with a score calibration on its output, as Model Maker writes."""
    import flatbuffers

    from edge_runtime.model_file import metadata_schema_generated as schema

    metadata = schema.ModelMetadataT.InitFromPackedBuf(raw, 0)
    output = metadata.subgraphMetadata[0].outputTensorMetadata[0]
    unit = schema.ProcessUnitT()
    unit.optionsType = schema.ProcessUnitOptions.ScoreCalibrationOptions
    unit.options = schema.ScoreCalibrationOptionsT()
    unit.options.scoreTransformation = schema.ScoreTransformationType.LOG
    unit.options.defaultScore = 0.1
    output.processUnits = [unit]
    calibration = schema.AssociatedFileT()
    calibration.name = CALIBRATION_FILE
    calibration.type = schema.AssociatedFileType.TENSOR_AXIS_SCORE_CALIBRATION
    output.associatedFiles.append(calibration)
    builder = flatbuffers.Builder(1024)
    builder.Finish(metadata.Pack(builder), file_identifier=b"M001")
    return bytes(builder.Output())


def _ours(bare: bytes, description: Any, variant: str, name: str) -> Seed:
    """`bare` exported as edge-convert exports: official metadata, then our archive of three entries."""
    from converter.official_metadata import attach_metadata_buffer, metadata_flatbuffer
    from edge_runtime.model_file.metadata import ModelMetadata, embed_metadata, read_metadata_bytes
    from edge_runtime.preprocess import PreprocessSpec

    prefix = attach_metadata_buffer(bare, metadata_flatbuffer(description))
    model = embed_metadata(prefix, ModelMetadata(LABELS, PreprocessSpec(height=SIDE, width=SIDE),
                                                 {"variant": variant}))
    entries = []
    with zipfile.ZipFile(io.BytesIO(model)) as archive:
        for entry in (LABELS_ENTRY, PREPROCESS_ENTRY, INFO_ENTRY):
            entries.append(raw_entry(entry, archive.read(entry)))
    if read_metadata_bytes(model) is None:
        raise RuntimeError(f"seed {name} does not read back its own metadata")
    return Seed(name, model, prefix, tuple(entries))


def _third_party(bare: bytes, description: Any, method: int, name: str) -> Seed:
    """`bare` as Model Maker-style tools ship it: official metadata with a score calibration, labels and
    the calibration file appended (stored or deflated)."""
    from converter.official_metadata import attach_metadata_buffer, metadata_flatbuffer
    from edge_runtime.model_file.labels import format_labels

    prefix = attach_metadata_buffer(bare, _with_score_calibration(metadata_flatbuffer(description)))
    files = {LABELS_ENTRY: format_labels(LABELS).encode("utf-8"), CALIBRATION_FILE: CALIBRATION_TEXT}
    entries = tuple(raw_entry(file, data, method) for file, data in files.items())
    return Seed(name, prefix + zip_archive(list(entries), len(prefix)), prefix, entries)


@functools.lru_cache(maxsize=1)
def build_seeds() -> tuple[Seed, ...]:
    """Our export of a tiny model, and two third-party-style ones (stored and deflated files); then the
    Flatten network (`_flatten_tflite`) as ours, third-party-style and ours in int8.
    Built once per process (TensorFlow converts the models): the tests share them."""
    from converter.official_metadata import ModelDescription, spec_normalization
    from edge_runtime.preprocess import PreprocessSpec

    description = ModelDescription(name="fuzz seed", description="a tiny untrained classifier", version="1",
                                   labels=LABELS, width=SIDE, height=SIDE,
                                   normalization=spec_normalization(PreprocessSpec(height=SIDE, width=SIDE)))
    bare = _tiny_tflite()
    flatten_float, flatten_int8 = _flatten_tflite()
    seeds = [
        _ours(bare, description, "float32", "ours"),
        _third_party(bare, description, zipfile.ZIP_STORED, "official"),
        _third_party(bare, description, zipfile.ZIP_DEFLATED, "official-deflated"),
        _ours(flatten_float, description, "float32", "ours-flatten"),
        _third_party(flatten_float, description, zipfile.ZIP_STORED, "official-flatten"),
        _ours(flatten_int8, description, "int8", "ours-flatten-int8"),
    ]
    for seed in seeds:
        official = read_official_metadata(seed.data, seed.name)
        if official is None or official.labels != LABELS:
            raise RuntimeError(f"seed {seed.name} does not read back: {official}")
    return tuple(seeds)


def save_seeds(seeds: tuple[Seed, ...], folder: Path) -> None:
    """Seeds as files a worker process reads back (`load_seeds`)."""
    folder.mkdir(parents=True, exist_ok=True)
    index = []
    for seed in seeds:
        (folder / f"{seed.name}.tflite").write_bytes(seed.data)
        (folder / f"{seed.name}.prefix").write_bytes(seed.prefix)
        entries = []
        for number, entry in enumerate(seed.entries):
            (folder / f"{seed.name}.{number}.entry").write_bytes(entry.payload)
            entries.append({**dataclasses.asdict(entry), "payload": f"{seed.name}.{number}.entry"})
        index.append({"name": seed.name, "entries": entries})
    (folder / "seeds.json").write_text(json.dumps(index, indent=2), encoding="utf-8")


def load_seeds(folder: Path) -> list[Seed]:
    seeds = []
    for item in json.loads((folder / "seeds.json").read_text(encoding="utf-8")):
        entries = tuple(RawEntry(**{**entry, "payload": (folder / entry["payload"]).read_bytes()})
                        for entry in item["entries"])
        seeds.append(Seed(item["name"], (folder / f"{item['name']}.tflite").read_bytes(),
                          (folder / f"{item['name']}.prefix").read_bytes(), entries))
    return seeds


# --- what only the interpreter reads: the model's graph -----------------------------------------------------

# The fields of TFLite's schema.fbs walked to find them (field ids): Model.subgraphs and buffers,
# SubGraph.tensors and operators, Tensor.shape, type, buffer, quantization and shape_signature,
# QuantizationParameters.scale and zero_point, Operator.inputs, outputs and builtin_options, Buffer.data.
MODEL_SUBGRAPHS_SLOT, MODEL_BUFFERS_SLOT = 2, 4
SUBGRAPH_TENSORS_SLOT, SUBGRAPH_OPERATORS_SLOT = 0, 3
TENSOR_SHAPE_SLOT, TENSOR_TYPE_SLOT, TENSOR_BUFFER_SLOT = 0, 1, 2
TENSOR_QUANTIZATION_SLOT, TENSOR_SHAPE_SIGNATURE_SLOT = 4, 7
QUANTIZATION_SCALE_SLOT, QUANTIZATION_ZERO_POINT_SLOT = 2, 3
OPERATOR_INPUTS_SLOT, OPERATOR_OUTPUTS_SLOT, OPERATOR_OPTIONS_SLOT = 1, 2, 4
BUFFER_DATA_SLOT = 0
# How a constant's elements are stored, by schema.fbs TensorType (FLOAT32, FLOAT16 as its bits, INT32, UINT8,
# INT64, BOOL, INT16, INT8, FLOAT64, UINT64, UINT32, UINT16); other types are written byte by byte.
ELEMENT_FORMATS = {0: "<f", 1: "<H", 2: "<i", 3: "<B", 4: "<q", 6: "<B", 7: "<h", 9: "<b", 10: "<d", 12: "<Q",
                   15: "<I", 16: "<H"}
FLOAT_FORMATS = ("<f", "<d")
# Constants up to this size are written: shape constants, slice bounds, biases. Weights are larger, and
# their values change only the scores.
SMALL_CONSTANT_BYTES = 64
# An option field is read as the widest of these integers that fits it and is aligned.
OPTION_FORMATS = {4: "<i", 2: "<h", 1: "<b"}
# What a graph write rewrites (`GraphValue.kind`).
CONSTANT, SCALE, ZERO_POINT, SHAPE, OPTION, OPERAND = ("constant", "scale", "zero point", "shape", "op option",
                                                       "op tensor")
GRAPH_WRITES_MAX = 2


@dataclasses.dataclass(frozen=True)
class GraphValue:
    """One value of a model's graph that the interpreter reads and the metadata readers do not."""

    kind: str
    where: str  # for the case's steps: "tensor 3 constant [0]"
    position: int  # of its bytes in the model file
    form: str  # its struct format


def _elements(table: Table, slot: int, form: str, kind: str, where: str) -> list[GraphValue]:
    """Each element of the vector of scalars in field `slot` of `table`."""
    size = struct.calcsize(form)
    start, count = table.vector(slot, size)
    return [GraphValue(kind, f"{where} [{index}]", start + size * index, form) for index in range(count)]


def _option_fields(options: Table, where: str) -> list[GraphValue]:
    """Each field of an operator's options table. Its type is not known here (a union of some 150
    tables), so a field is read as wide as the room up to the next field allows."""
    buffer, position = options.checker.buffer, options.position
    vtable = position - SOFFSET.unpack_from(buffer, position)[0]
    vtable_size, table_size = struct.unpack_from("<HH", buffer, vtable)
    slots = (vtable_size - VTABLE_HEADER_BYTES) // FIELD_SLOT_BYTES
    fields = sorted((at, slot) for slot in range(slots)
                    if (at := options.checker.field(position, slot, 1)) is not None)
    ends = [at for at, _ in fields[1:]] + [position + table_size]
    values = []
    for (at, slot), end in zip(fields, ends):
        width = next(width for width in OPTION_FORMATS if width <= end - at and at % width == 0)
        values.append(GraphValue(OPTION, f"{where} field {slot}", at, OPTION_FORMATS[width]))
    return values


def graph_values(model: bytes) -> list[GraphValue]:
    """What the interpreter reads of a model and the metadata readers do not: the elements of small
    constant buffers, quantization scales and zero points, tensor shapes and shape signatures, the
    operators' tensor indices and the fields of their options. Found through flatbuffer_check's
    bounds-checked reader of the model's tables; each value once."""
    root = Table.root(model)
    buffers, buffer_count = root.vector(MODEL_BUFFERS_SLOT, UOFFSET.size)
    subgraphs, subgraph_count = root.vector(MODEL_SUBGRAPHS_SLOT, UOFFSET.size)
    found: dict[int, GraphValue] = {}
    for graph_index in range(subgraph_count):
        graph = root.table_at(subgraphs + UOFFSET.size * graph_index)
        prefix = f"subgraph {graph_index} " if graph_index else ""
        tensors, tensor_count = graph.vector(SUBGRAPH_TENSORS_SLOT, UOFFSET.size)
        for index in range(tensor_count):
            tensor = graph.table_at(tensors + UOFFSET.size * index)
            where = f"{prefix}tensor {index}"
            values = (_elements(tensor, TENSOR_SHAPE_SLOT, "<i", SHAPE, f"{where} shape")
                      + _elements(tensor, TENSOR_SHAPE_SIGNATURE_SLOT, "<i", SHAPE, f"{where} shape_signature"))
            buffer = int(tensor.scalar(TENSOR_BUFFER_SLOT, "<I"))
            if 0 < buffer < buffer_count:  # buffer 0 is the empty one of every tensor without data
                form = ELEMENT_FORMATS.get(int(tensor.scalar(TENSOR_TYPE_SLOT, "<b")), "<B")
                start, size = root.table_at(buffers + UOFFSET.size * buffer).vector(BUFFER_DATA_SLOT, 1)
                width = struct.calcsize(form)
                if size <= SMALL_CONSTANT_BYTES:
                    values += [GraphValue(CONSTANT, f"{where} constant [{element}]", start + width * element, form)
                               for element in range(size // width)]
            at = tensor.checker.field(tensor.position, TENSOR_QUANTIZATION_SLOT, UOFFSET.size)
            if at is not None:
                quantization = tensor.table_at(at)
                values += (_elements(quantization, QUANTIZATION_SCALE_SLOT, "<f", SCALE, f"{where} scale")
                           + _elements(quantization, QUANTIZATION_ZERO_POINT_SLOT, "<q", ZERO_POINT,
                                       f"{where} zero point"))
            found.update((value.position, value) for value in values if value.position not in found)
        operators, operator_count = graph.vector(SUBGRAPH_OPERATORS_SLOT, UOFFSET.size)
        for index in range(operator_count):
            operator = graph.table_at(operators + UOFFSET.size * index)
            where = f"{prefix}op {index}"
            values = (_elements(operator, OPERATOR_INPUTS_SLOT, "<i", OPERAND, f"{where} input")
                      + _elements(operator, OPERATOR_OUTPUTS_SLOT, "<i", OPERAND, f"{where} output"))
            at = operator.checker.field(operator.position, OPERATOR_OPTIONS_SLOT, UOFFSET.size)
            if at is not None:
                values += _option_fields(operator.table_at(at), f"{where} option")
            found.update((value.position, value) for value in values if value.position not in found)
    return sorted(found.values(), key=lambda value: value.position)


def _stored(form: str, new: int | float) -> bytes:
    """`new` as a value of struct format `form` stores it (a float beyond float32's range becomes infinite)."""
    if form == "<f" and math.isfinite(new) and abs(new) > FLOAT32_MAX:
        new = math.copysign(math.inf, new)
    return struct.pack(form, new)


def write_graph_value(data: bytes, value: GraphValue, new: int | float) -> bytes:
    """`data` with `value` rewritten to `new`."""
    stored = _stored(value.form, new)
    return data[:value.position] + stored + data[value.position + len(stored):]


def _replacements(form: str, current: int | float):
    """What a graph value is rewritten to: its neighbours, its negation and double, the edges of its
    type and special floats (those that change it), or anything of its type."""
    st = _st()
    if form in FLOAT_FORMATS:
        chosen: tuple[int | float, ...] = (0.0, -0.0, 1.0, -1.0, math.nan, math.inf, -math.inf, FLOAT32_TINY,
                                           FLOAT32_MAX, current * 2, -current, current / 2)
        anything = st.floats(width=32 if form == "<f" else 64)
    else:
        bits = 8 * struct.calcsize(form)
        low, high = (0, (1 << bits) - 1) if form[1].isupper() else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
        chosen = tuple(sorted({min(max(value, low), high)
                               for value in (current + 1, current - 1, -current, current * 2, 0, 1, -1, low, high)}))
        anything = st.integers(low, high)
    unchanged = _stored(form, current)
    changes = tuple(value for value in chosen if _stored(form, value) != unchanged)
    return st.sampled_from(changes) | anything


# --- mutations ---------------------------------------------------------------------------------------------

Draw = Callable[[Any], Any]


def _st():
    from hypothesis import strategies

    return strategies


def _archive_start(seed: Seed) -> int:
    return len(seed.prefix)


def _position(draw: Draw, data: bytes, seed: Seed) -> int:
    """A byte position, drawn more often where the readers look: metadata, archive, its directory."""
    st = _st()
    if not data:
        return 0
    start, end = seed.metadata_span
    directory = data.rfind(b"PK\x01\x02")
    regions = {"anywhere": (0, len(data)), "metadata": (start, end), "archive": (_archive_start(seed), len(data)),
               "directory": (max(directory, 0), len(data)), "model tables": (0, min(256, len(data)))}
    low, high = regions[draw(st.sampled_from(sorted(regions)))]
    low, high = min(low, len(data) - 1), max(min(high, len(data)), 1)
    return draw(st.integers(low, max(low, high - 1)))


def flip_bytes(data: bytes, seed: Seed, draw: Draw) -> tuple[bytes, str]:
    st = _st()
    if not data:
        return data, "flip nothing (empty)"
    damaged = bytearray(data)
    count = draw(st.integers(1, 8))
    for _ in range(count):
        damaged[_position(draw, data, seed)] ^= draw(st.integers(1, 255))
    return bytes(damaged), f"flip {count} bytes"


def interesting_integer(data: bytes, seed: Seed, draw: Draw) -> tuple[bytes, str]:
    st = _st()
    width = draw(st.sampled_from((1, 2, 4, 8)))
    value = draw(st.sampled_from(INTERESTING) | st.integers(0, (1 << (8 * width)) - 1)) & ((1 << (8 * width)) - 1)
    position = _position(draw, data, seed)
    damaged = bytearray(data)
    damaged[position:position + width] = value.to_bytes(width, "little")
    return bytes(damaged), f"write {value:#x} ({width} bytes) at {position}"


def flatbuffer_offset(data: bytes, seed: Seed, draw: Draw) -> tuple[bytes, str]:
    """An offset or length of the metadata flatbuffer, or of the model's tables, pointing out of range."""
    st = _st()
    start, end = seed.metadata_span
    in_metadata = draw(st.booleans())
    low, high = (start, end) if in_metadata else (0, min(len(seed.prefix), 4096))
    position = low + 4 * draw(st.integers(0, max((high - low) // 4 - 1, 0)))
    room = (end - start) if in_metadata else len(data)
    value = draw(st.sampled_from((room, room + 1, room * 2, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000))
                 | st.integers(room, 0xFFFFFFFF))
    damaged = bytearray(data)
    if position + 4 <= len(damaged):
        damaged[position:position + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
    where = "metadata" if in_metadata else "model"
    return bytes(damaged), f"{where} offset at {position} -> {value:#x}"


def truncate(data: bytes, seed: Seed, draw: Draw) -> tuple[bytes, str]:
    cut = _position(draw, data, seed)
    return data[:cut], f"truncate at {cut}"


def splice(data: bytes, seed: Seed, draw: Draw) -> tuple[bytes, str]:
    st = _st()
    position = _position(draw, data, seed)
    if draw(st.booleans()):
        length = draw(st.integers(1, 64))
        return data[:position] + data[position + length:], f"delete {length} at {position}"
    inserted = draw(st.binary(min_size=1, max_size=64))
    return data[:position] + inserted + data[position:], f"insert {len(inserted)} at {position}"


BYTE_MUTATIONS = (flip_bytes, interesting_integer, flatbuffer_offset, truncate, splice)


def graph_write(data: bytes, seed: Seed, draw: Draw) -> tuple[bytes, str]:
    """One value only the interpreter reads, rewritten (`graph_values`): a kind first, so that the
    few constants and zero points are drawn as often as the many shapes, then a value of that kind.
    `data` must still hold the seed's flatbuffer where the seed has it."""
    st = _st()
    kind = draw(st.sampled_from(sorted(seed.graph)))
    value = draw(st.sampled_from(seed.graph[kind]))
    current = struct.unpack_from(value.form, data, value.position)[0]
    new = draw(_replacements(value.form, current))
    return write_graph_value(data, value, new), f"{value.where}: {current!r} -> {new!r}"


def directory_lie(seed: Seed, draw: Draw) -> tuple[bytes, str]:
    """An archive whose directory lies: sizes, method, flags, names or its entry count."""
    st = _st()
    entries = list(seed.entries)
    index = draw(st.integers(0, len(entries) - 1))
    entry = entries[index]
    field = draw(st.sampled_from(("file_size", "compress_size", "method", "flags", "name", "count")))
    size = st.sampled_from((0, 1, len(entry.payload) - 1, len(entry.payload) + 1, LABELS_MAX_BYTES,
                            LABELS_MAX_BYTES + 1, 0xFFFFFFFF)) | st.integers(0, 0xFFFFFFFF)
    count = None
    if field == "file_size":
        entry = dataclasses.replace(entry, file_size=max(draw(size), 0))
    elif field == "compress_size":
        entry = dataclasses.replace(entry, compress_size=max(draw(size), 0))
    elif field == "method":
        entry = dataclasses.replace(entry, method=draw(st.sampled_from((0, 8, 12, 14, 99))))
    elif field == "flags":
        entry = dataclasses.replace(entry, flags=draw(st.sampled_from((1, 8, 0x40, 0x800, 0xFFFF))))
    elif field == "name":
        entry = dataclasses.replace(entry, name=draw(st.sampled_from((entries[0].name, "", "../" + entry.name))))
    else:
        count = draw(st.integers(0, 0xFFFF))
    entries[index] = entry
    return seed.rebuilt(entries, count), f"directory lie: {entry.name} {field}"


def bomb(seed: Seed, draw: Draw) -> tuple[bytes, str]:
    """A deflate bomb in place of the labels (or calibration) file: honest about its size, or lying."""
    st = _st()
    entries = list(seed.entries)
    index = draw(st.integers(0, len(entries) - 1))
    inflated = draw(st.sampled_from((2 * MIB, 64 * MIB, 4096 * MIB - MIB)))
    declared = draw(st.sampled_from((None, 0, 100, LABELS_MAX_BYTES, LABELS_MAX_BYTES + 1)))
    entries[index] = bomb_entry(entries[index].name, inflated, declared)
    return seed.rebuilt(entries), f"bomb {entries[index].name}: {inflated:,} bytes, declares {declared}"


def many_entries(seed: Seed, draw: Draw) -> tuple[bytes, str]:
    st = _st()
    extra = draw(st.sampled_from((ARCHIVE_MAX_ENTRIES, ARCHIVE_MAX_ENTRIES * 4)) | st.integers(1, 3000))
    entries = list(seed.entries) + [raw_entry(f"f{number}", b"") for number in range(extra)]
    count = draw(st.sampled_from((None, len(seed.entries), 0, 0xFFFF)))
    return seed.rebuilt(entries, count), f"{len(entries)} entries, end record says {count}"


def hostile_entry(seed: Seed, draw: Draw) -> tuple[bytes, str]:
    """An entry's content replaced: deep or wrongly typed JSON, too many lines, not UTF-8, too long."""
    st = _st()
    entries = list(seed.entries)
    index = draw(st.integers(0, len(entries) - 1))
    depth = draw(st.integers(1, 100_000))
    content = draw(st.sampled_from((
        b"[" * depth, b'{"a":' * depth, b"\n" * (LABELS_MAX_LINES + 1), b"x\n" * (LABELS_MAX_LINES + 1),
        b"\xff\xfe" * 10, b"[]", b"null", b'"text"', b'{"height": "big", "scale": "x"}',
        b'{"background": [1e999, 0, 0]}', b'{"width": 1e999}', b'{"background": 5}',
        b'{"resize": [], "resample": {}}', b"1.0,2.0\n", b"nan,nan,nan\n" * 3, b"a" * (LABELS_MAX_BYTES + 1),
        b"", b"1,1,1,1,1\n",
    )))
    method = draw(st.sampled_from((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)))
    entries[index] = raw_entry(entries[index].name, content, method)
    return seed.rebuilt(entries), f"{entries[index].name} holds {content[:20]!r}... ({len(content):,} bytes)"


STRUCTURAL_MUTATIONS = (directory_lie, bomb, many_entries, hostile_entry)


@dataclasses.dataclass(frozen=True)
class Case:
    seed: str
    steps: tuple[str, ...]
    data: bytes


def mutated_models(seeds: list[Seed], graph_writes: bool = True):
    """The hypothesis strategy of fuzz cases: a seed, maybe a structural change, maybe writes into its
    graph (unless `graph_writes` is False), then byte mutations."""
    st = _st()

    @st.composite
    def cases(draw: Draw) -> Case:
        seed = draw(st.sampled_from(seeds))
        data, steps = seed.data, []
        if draw(st.integers(0, 2)) == 0:
            data, step = draw(st.sampled_from(STRUCTURAL_MUTATIONS))(seed, draw)
            steps.append(step)
        graph = graph_writes and draw(st.integers(0, 2)) == 0
        if graph:  # the archive's changes leave the flatbuffer where it was
            for _ in range(draw(st.integers(1, GRAPH_WRITES_MAX))):
                data, step = graph_write(data, seed, draw)
                steps.append(step)
        # After graph writes, few byte mutations: most of them make the readers refuse the model, and
        # the graph writes are there to reach the interpreter.
        for _ in range(draw(st.integers(0 if steps else 1, 1 if graph else 3))):
            data, step = draw(st.sampled_from(BYTE_MUTATIONS))(data, seed, draw)
            steps.append(step)
        return Case(seed.name, tuple(steps), data)

    return cases()


# --- running one case --------------------------------------------------------------------------------------

def read_everything(path: Path) -> str:
    """What every path that opens a model reads from it, beside the interpreter: our metadata, the
    official metadata and its files, and the summary `--info` prints. Returns how it went."""
    ours = read_metadata(path)
    if ours is not None:
        describe_calibration(ours.info.get("calibration"))  # what --info makes of the embedded info
        json.dumps(ours.info)
    official = read_official_metadata(path.read_bytes(), str(path))
    if official is not None:
        json.dumps(official.summary())
    return "read" if ours is not None or official is not None else "no metadata"


def try_model(path: Path) -> tuple[str, str | None]:
    """Read a model as `read_everything` does; when the readers accept it, build the Classifier
    edge-classify builds and classify one image. Returns what became of it (REFUSED, LOAD_REFUSED,
    INVOKE_FAILED or RAN) and the ModelError's message (None when it ran); any other exception
    propagates: it is a traceback."""
    outcome = REFUSED
    try:
        read_everything(path)
        outcome = LOAD_REFUSED
        classifier = Classifier(path)
        outcome = INVOKE_FAILED
        classifier.scores(np.full((classifier.spec.height, classifier.spec.width, 3), PROBE_PIXEL, dtype=np.uint8))
    except ModelError as error:
        return outcome, str(error)
    return RAN, None


class CaseTimeout(Exception):
    """A case ran past its time cap."""


@dataclasses.dataclass
class Tally:
    """The figures of a run."""

    cases: int = 0
    read: int = 0  # accepted by the readers, then run, or refused by the interpreter in one line
    refused: int = 0  # refused by the readers in one line
    ran: int = 0  # of the read: classified an image
    load_refused: int = 0  # of the read: the interpreter would not load it
    invoke_failed: int = 0  # of the read: it loaded, and failed when invoked
    tracebacks: int = 0
    multi_line: int = 0  # a ModelError of more than one line (or none): counted as read or refused, and a failure
    crashes: int = 0  # cases that killed their worker (a signal from native code): counted by the parent
    hangs: int = 0
    max_case_seconds: float = 0.0
    slowest_case: list[str] = dataclasses.field(default_factory=list)
    max_case_rss_rise_mib: float = 0.0  # the most resident memory one case added while it ran
    max_case_peak_rss_mib: float = 0.0  # the worker's highest resident memory during a case
    hungriest_case: list[str] = dataclasses.field(default_factory=list)
    failures: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    invoke_failures: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # the first few, as examples

    def record(self, case: Case, path: Path, time_cap_s: float) -> None:
        def expire(signum: int, frame: Any) -> None:
            raise CaseTimeout(f"over {time_cap_s} s")

        path.write_bytes(case.data)
        previous = signal.signal(signal.SIGALRM, expire)
        resident_before = reset_peak_rss()
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, time_cap_s)
        try:
            outcome, message = try_model(path)
            if message is not None and ("\n" in message or not message):
                self.multi_line += 1
                self._fail(case, f"ModelError ({outcome}) not on one line: " + repr(message))
            if outcome == REFUSED:
                self.refused += 1
            else:
                self.read += 1
                if outcome == RAN:
                    self.ran += 1
                elif outcome == LOAD_REFUSED:
                    self.load_refused += 1
                else:
                    self.invoke_failed += 1
                    if len(self.invoke_failures) < KEPT_FAILURES:
                        self.invoke_failures.append({"seed": case.seed, "steps": list(case.steps), "error": message})
        except CaseTimeout:
            self.hangs += 1
            self._fail(case, "hang")
        except BaseException as error:  # noqa: BLE001 - counting them is the point
            if isinstance(error, KeyboardInterrupt):
                raise
            self.tracebacks += 1
            self._fail(case, traceback.format_exc())
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        seconds = time.perf_counter() - start
        if seconds > self.max_case_seconds:
            self.max_case_seconds, self.slowest_case = seconds, [case.seed, *case.steps]
        if resident_before is not None:
            peak = memory_status("VmHWM")
            self.max_case_peak_rss_mib = max(self.max_case_peak_rss_mib, peak / MIB)
            rise = max(peak - resident_before, 0) / MIB
            if rise > self.max_case_rss_rise_mib:
                self.max_case_rss_rise_mib, self.hungriest_case = rise, [case.seed, *case.steps]
        self.cases += 1

    def _fail(self, case: Case, what: str) -> None:
        if len(self.failures) < KEPT_FAILURES:
            self.failures.append(failure_record(case.seed, case.steps, what, case.data))


def failure_record(seed: str, steps: Any, what: str, data: bytes) -> dict[str, Any]:
    """A failed case as the record keeps it: the whole model file (hex) where it is small enough to
    replay the case from, else its first bytes."""
    kept = data if len(data) <= KEPT_MODEL_BYTES else data[:KEPT_HEAD_BYTES]
    return {"seed": seed, "steps": list(steps), "error": what, "bytes": len(data),
            "data_hex" if kept is data else "data_hex_head": kept.hex()}


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes (VmSize, VmRSS, VmHWM); 0 where
    there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> int | None:
    """Reset this process's peak resident memory (VmHWM) to its current one, which is returned;
    None where Linux's /proc/self/clear_refs is missing (then only the run's peak is known)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return None
    return memory_status("VmRSS")


def run_cases(seeds: list[Seed], cases: int, seed: int | str, time_cap_s: float, folder: Path,
              progress: Callable[[int, Case, Tally], None] | None = None, graph_writes: bool = True) -> Tally:
    """Run `cases` hypothesis-drawn cases through `try_model`; never raises for a case. `progress` is told
    of each case (its number from 0, the case, the figures so far) before it runs."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    tally = Tally()
    path = folder / CASE_FILE
    drawn = 0

    @hypothesis_seed(seed)
    @settings(max_examples=cases, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(mutated_models(seeds, graph_writes))
    def fuzz(case: Case) -> None:
        nonlocal drawn
        if progress is not None:
            progress(drawn, case, tally)
        drawn += 1
        tally.record(case, path, time_cap_s)

    fuzz()
    return tally


# --- the worker and the parent ------------------------------------------------------------------------------

def worker(args: argparse.Namespace) -> int:
    """Run the cases; before each, write it and the figures so far to PROGRESS_FILE in `args.folder`
    (where its model is CASE_FILE), so that the parent can name a case that kills this process and go
    on without it. The worker started after the r-th such case draws from the seed "SEED restart r"."""
    faulthandler.enable()  # a crash in native code prints where the case was (load or invoke) before it kills us
    seeds = load_seeds(Path(args.seeds))
    with tempfile.TemporaryDirectory(prefix="fuzz-case-") as scratch:
        folder = Path(args.folder) if args.folder else Path(scratch)
        # Warm-up: imports, caches. Without graph writes, which may crash the interpreter before there is a
        # case in progress to blame.
        run_cases(seeds, 20, args.seed + 1, args.time_cap, Path(scratch), graph_writes=False)
        for seed in seeds:  # and the interpreter's, whatever those cases drew: before the address-space cap
            (Path(scratch) / "seed.tflite").write_bytes(seed.data)
            try_model(Path(scratch) / "seed.tflite")
        baseline_rss = memory_status("VmRSS") / MIB
        if args.address_space_mib:
            limit = memory_status("VmSize") + args.address_space_mib * MIB
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        started = time.perf_counter()

        def figures(tally: Tally) -> dict[str, Any]:
            return {**dataclasses.asdict(tally), "seconds": round(time.perf_counter() - started, 1),
                    "baseline_rss_mib": round(baseline_rss, 1)}

        # One file kept open and rewritten in place: a write per case costs microseconds, not an open and close.
        with open(folder / PROGRESS_FILE, "wb") as progress_file:
            def progress(index: int, case: Case, tally: Tally) -> None:
                state = {"index": index, "seed": case.seed, "steps": list(case.steps), "figures": figures(tally)}
                text = json.dumps(state).encode("utf-8")
                os.pwrite(progress_file.fileno(), text, 0)
                os.ftruncate(progress_file.fileno(), len(text))

            hypothesis_seed = f"{args.seed} restart {args.restart}" if args.restart else args.seed
            tally = run_cases(seeds, args.cases, hypothesis_seed, args.time_cap, folder, progress)
    if not tally.max_case_peak_rss_mib:  # no /proc/self/clear_refs: only the process's peak is known
        tally.max_case_peak_rss_mib = peak_rss_mib()
        tally.max_case_rss_rise_mib = max(peak_rss_mib() - baseline_rss, 0.0)
    result = {**figures(tally), "final_rss_mib": round(memory_status("VmRSS") / MIB, 1)}
    Path(args.result).write_text(json.dumps(result), encoding="utf-8")
    return 0


# Figures of two workers' runs that add up; the others are the largest of the two, or (final_rss_mib, which a
# worker that was killed does not have) the later.
SUMMED_FIGURES = ("cases", "read", "refused", "ran", "load_refused", "invoke_failed", "tracebacks", "multi_line",
                  "crashes", "hangs", "seconds")
LARGEST_FIGURES = (("max_case_seconds", "slowest_case"), ("max_case_rss_rise_mib", "hungriest_case"),
                   ("max_case_peak_rss_mib", None), ("baseline_rss_mib", None))


def merge_figures(total: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    """The figures of a run made of `total` (None: nothing yet) and then `part`."""
    if total is None:
        return {**part, "failures": list(part["failures"])}
    merged = {**total, "final_rss_mib": part.get("final_rss_mib"), "failures": total["failures"] + part["failures"],
              "invoke_failures": (total["invoke_failures"] + part["invoke_failures"])[:KEPT_FAILURES]}
    for name in SUMMED_FIGURES:
        merged[name] = total[name] + part[name]
    for name, case in LARGEST_FIGURES:
        if part[name] > total[name]:
            merged[name] = part[name]
            if case is not None:
                merged[case] = part[case]
    return merged


def run_workers(folder: Path, cases: int, seed: int, time_cap_s: float, address_space_mib: int,
                script: str = __file__) -> tuple[dict[str, Any] | None, str | None]:
    """Run `cases` cases in a worker process (`script --worker`) with the seeds saved under `folder`
    (`save_seeds`); when a case kills it (a signal: a crash in native code, which no Python handler
    sees), count that case as a crash, keep its model, and start another worker for the cases left, which
    draws them from a seed of its own (replaying the cases before the crash would cost more than running
    them). Returns the figures of every case run (None when the first worker died before any case) and
    why the run stopped early (None when it did not)."""
    result_file, progress_file = folder / "result.json", folder / PROGRESS_FILE
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    total: dict[str, Any] | None = None
    done = 0
    for restart in range(MAX_WORKER_RESTARTS + 1):
        for stale in (result_file, progress_file):
            stale.unlink(missing_ok=True)
        command = [sys.executable, script, "--worker", "--seeds", str(folder / "seeds"), "--folder", str(folder),
                   "--result", str(result_file), "--cases", str(cases - done), "--seed", str(seed),
                   "--restart", str(restart), "--time-cap", str(time_cap_s),
                   "--address-space-mib", str(address_space_mib)]
        timeout = max(WORKER_MIN_TIMEOUT_S, (cases - done) * WORKER_SECONDS_PER_CASE)
        try:
            code: int | None = subprocess.run(command, timeout=timeout, env=environment).returncode
        except subprocess.TimeoutExpired:
            code = None
        if code == 0 and result_file.exists():
            return merge_figures(total, json.loads(result_file.read_text(encoding="utf-8"))), None
        try:
            state = json.loads(progress_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            how = f"hung (limit {timeout:.0f} s)" if code is None else f"failed (exit {code})"
            return total, f"the worker {how} before its first case"
        figures = state["figures"]
        if code is None:
            figures["hangs"] += 1
            what = f"hang: the worker was stopped after {timeout:.0f} s"
        elif code < 0:
            figures["crashes"] += 1
            what = f"crash: the worker was killed by {signal.Signals(-code).name}"
        else:
            figures["tracebacks"] += 1
            what = f"the worker exited with {code} (its own traceback above)"
        figures["cases"] += 1
        figures["failures"].append(failure_record(state["seed"], state["steps"], what,
                                                  (folder / CASE_FILE).read_bytes()))
        total = merge_figures(total, figures)
        if code is None or code > 0:
            return total, f"the worker stopped at case {done + state['index']} ({what})"
        done += state["index"] + 1
        if done >= cases:
            return total, None
    return total, f"more than {MAX_WORKER_RESTARTS} cases killed the worker: stopped at case {done}"


def parent(args: argparse.Namespace) -> int:
    from edge_runtime.atomic import write_text

    print("Building the seed models (TensorFlow)...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as folder:
        seeds = build_seeds()
        save_seeds(seeds, Path(folder) / "seeds")
        print(f"Fuzzing {args.cases:,} cases (seed {args.seed}, {args.time_cap} s a case)...", file=sys.stderr,
              flush=True)
        result, stopped = run_workers(Path(folder), args.cases, args.seed, args.time_cap, args.address_space_mib)
        if result is None:
            print(f"make fuzz: {stopped}", file=sys.stderr)
            return 1
    rise = result["max_case_rss_rise_mib"]
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/fuzz_models.py", *sys.argv[1:]]),
        "cpu": cpu_model(), "python": platform.python_version(),
        "seeds": [seed.name for seed in seeds], "hypothesis_seed": args.seed,
        "time_cap_s": args.time_cap, "memory_cap_mib": args.memory_cap_mib,
        "address_space_cap_mib": args.address_space_mib, **result,
    }
    lines = [
        f"cases:              {result['cases']:,} ({result['read']:,} read, {result['refused']:,} refused "
        "with one line)",
        f"interpreter:        of the {result['read']:,} read, {result['ran']:,} classified an image, "
        f"{result['load_refused']:,} were refused at load and {result['invoke_failed']:,} failed at invoke, "
        "each with one line",
        f"tracebacks:         {result['tracebacks']} (and {result['multi_line']} errors not on one line)",
        f"crashes:            {result['crashes']} (cases that killed the worker; it restarted after each)",
        f"hangs:              {result['hangs']} (cap {args.time_cap} s a case)",
        f"max time per case:  {result['max_case_seconds'] * 1000:.1f} ms ({' / '.join(result['slowest_case'])})",
        f"max memory:         a case added at most {rise:.1f} MiB resident (cap {args.memory_cap_mib} MiB; "
        f"{' / '.join(result['hungriest_case'])}); the worker peaked at {result['max_case_peak_rss_mib']:.1f} MiB "
        f"from {result['baseline_rss_mib']:.1f} MiB before the first case, its address space capped at "
        f"+{args.address_space_mib} MiB",
        f"total:              {result['seconds']:.0f} s",
    ]
    print("\n".join(lines))
    for failure in result["failures"]:
        print(f"FAILED {failure['seed']} {failure['steps']}:\n{failure['error']}", file=sys.stderr)
    if stopped:
        print(f"make fuzz: {stopped}", file=sys.stderr)
    if args.record:
        write_text(args.record, json.dumps(record, indent=2) + "\n")
        print(f"Wrote {args.record}", file=sys.stderr)
    failed = (result["tracebacks"] or result["multi_line"] or result["crashes"] or result["hangs"]
              or rise > args.memory_cap_mib or result["cases"] < args.cases)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=DEFAULT_CASES, help="mutated models to read")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="hypothesis seed (same seed, same cases)")
    parser.add_argument("--time-cap", type=float, default=DEFAULT_TIME_CAP_S, help="seconds a case may take")
    parser.add_argument("--memory-cap-mib", type=int, default=DEFAULT_MEMORY_CAP_MIB,
                        help="peak resident MiB the cases may add")
    parser.add_argument("--address-space-mib", type=int, default=DEFAULT_ADDRESS_SPACE_MIB,
                        help="address space the worker may add after loading (0: no cap)")
    parser.add_argument("--record", help="write the figures to this JSON file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seeds", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--restart", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    return worker(args) if args.worker else parent(args)


if __name__ == "__main__":
    sys.exit(main())
