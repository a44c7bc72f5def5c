"""The valid models the fuzz cases start from, built once per process with TensorFlow.

A Conv2D-GlobalAveragePooling-Dense network (ours, official, official-deflated), and the documented
CNN's layer kinds in miniature, Conv2D-MaxPool-Flatten-Dense (ours-flatten, official-flatten and
ours-flatten-int8). "ours" is exported as edge-convert exports; "official" as Model Maker-style tools
ship a model. The parent saves them as files (`save_seeds`) that its worker reads back (`load_seeds`).
"""

from __future__ import annotations

import dataclasses
import functools
import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.fuzz.archives import RawEntry, raw_entry, zip_archive
from benchmarks.fuzz.graph import GraphValue, graph_values
from edge_runtime.model_file.metadata import INFO_ENTRY, LABELS_ENTRY, PREPROCESS_ENTRY
from edge_runtime.model_file.official_metadata import read_official_metadata

LABELS = ["cat", "dog", "bird"]
CALIBRATION_FILE = "calibration.csv"
CALIBRATION_TEXT = b"1.0,2.0,-1.0\n\n0.5,1.0,0.0,0.1\n"
SIDE = 16
CALIBRATION_IMAGES = 8  # representative images of the int8 seed's conversion (random pixels: the file matters)


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
