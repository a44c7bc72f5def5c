"""Keras model to TFLite: float32, full-integer int8 and optional extra variants.

Every variant is converted from a SavedModel export of the Keras model, gets the labels and the
preprocessing specification embedded (`edge_runtime.metadata`), and is written atomically; a
`manifest.json` beside them records each file's size and sha256.

The int8 variant is full-integer post-training quantization: int8 weights and activations, int8
input and output tensors, builtin int8 ops only. Its calibration images are drawn with a seed from
the training images only and go through `edge_runtime.preprocess.scale_pixels`, the function the
trainer feeds the network with, so the same seed always gives the same file. Its logits are
quantized over the range that decides the answer rather than their full min/max (the int8 graph is
softmax(clip(logits)); see `converter.logit_range`), which makes their int8 step about half as
large (0.17 instead of 0.30 on the recipe's model). The optional uint8 variant is the same
quantization with uint8 input and output tensors, for tools that take no int8 tensors (MediaPipe).

Every file also carries the official TFLite metadata (`converter.official_metadata`): name,
input normalization and colour space, labels, so tools of the TFLite ecosystem read it too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shlex
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from converter.logit_range import LogitRange, calibration_logits, clipped_model, logit_range, softmax_head
from converter.official_metadata import (ModelDescription, attach_metadata_buffer, check_official_metadata,
                                         metadata_flatbuffer, spec_normalization)
from edge_runtime.atomic import write_bytes
from edge_runtime.errors import DataError, ModelError
from edge_runtime.interpreter import load_interpreter_class
from edge_runtime.labels import read_labels
from edge_runtime.manifest import sha256_file, write_manifest
from edge_runtime.metadata import ModelMetadata, embed_metadata
from edge_runtime.preprocess import DEFAULT_SPEC, PreprocessSpec, scale_pixels
from trainer.invocation import knob
from trainer.tensorflow_env import import_tensorflow, native_output_to_log

logger = logging.getLogger(__name__)

FLOAT32 = "float32"
INT8 = "int8"
UINT8 = "uint8"  # full-integer like int8, with uint8 input and output for tools that take no int8 tensors
DYNAMIC = "dynamic"  # int8 weights, float activations and float input/output
FLOAT16 = "float16"  # float16 weights, float32 input/output
VARIANTS = (FLOAT32, INT8, UINT8, DYNAMIC, FLOAT16)
FULL_INTEGER = (INT8, UINT8)  # calibrated, with quantized input and output tensors
DEFAULT_VARIANTS = (FLOAT32, INT8)
DEFAULT_CALIBRATION_SIZE = 500
MODEL_FILE_TEMPLATE = "model_{variant}.tflite"
KERAS_MODEL_NAME = "model.keras"
LABELS_NAME = "labels.txt"
TRAINING_INFO_NAME = "training.json"
KERAS_SUFFIXES = (".keras",)
MAKE_DEFAULT_OUT = Path("artifacts")  # the Makefile's OUT, named in the hints only when it differs
IMAGE_INPUT_RANK = 4  # (batch, height, width, channels)
CLASS_OUTPUT_RANK = 2  # (batch, classes)
RGB_CHANNELS = 3
CONVERTER_NAME = "edge-image-toolkit converter"
MODEL_NAME_TEMPLATE = "edge-image-toolkit image classifier ({variant})"  # the official metadata's name
SHORT_HASH = 12  # hex digits of the source model's sha256 that name its version in the official metadata
# What each variant's info says about its tensors, for people reading model_info.json.
VARIANT_DESCRIPTIONS = {
    FLOAT32: "float32 weights and activations",
    INT8: "full-integer post-training quantization: int8 weights, activations, input and output",
    UINT8: "full-integer post-training quantization: int8 weights and activations, uint8 input and output",
    DYNAMIC: "dynamic-range quantization: int8 weights, float32 activations, input and output",
    FLOAT16: "float16 weights, float32 activations, input and output",
}

Progress = Callable[[str], None]


@dataclasses.dataclass(frozen=True)
class ConvertedModel:
    """One written `.tflite` file."""

    variant: str
    path: Path
    size: int
    sha256: str


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    """What `convert_model` wrote: the models in variant order and the manifest."""

    models: list[ConvertedModel]
    manifest: Path
    source_sha256: str
    calibration_count: int
    calibration_seed: int | None

    def model(self, variant: str) -> ConvertedModel:
        """The written model of one variant (KeyError when it was not converted)."""
        for converted in self.models:
            if converted.variant == variant:
                return converted
        raise KeyError(variant)


def model_file_name(variant: str) -> str:
    """`model_<variant>.tflite`, the file name of a variant."""
    return MODEL_FILE_TEMPLATE.format(variant=variant)


def parse_variants(names: str | Iterable[str]) -> tuple[str, ...]:
    """Validate variant names (a comma-separated string or a list); keep VARIANTS order, no repeats."""
    if isinstance(names, str):
        names = names.split(",")
    requested = [name.strip().lower() for name in names if name.strip()]
    unknown = sorted(set(requested) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variant {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if not requested:
        raise ValueError(f"no variant given; choose from {', '.join(VARIANTS)}")
    return tuple(variant for variant in VARIANTS if variant in requested)


def _make_out(folder: Path) -> str:
    return "" if folder == MAKE_DEFAULT_OUT else f" OUT={shlex.quote(str(folder))}"


def train_first_hint(model_path: str | os.PathLike) -> str:
    """What to run when the Keras model is missing: the trainer, writing into the model's folder."""
    folder = Path(model_path).parent
    return f"train a model first (make train{_make_out(folder)}, or edge-train --out {shlex.quote(str(folder))})"


def convert_first_hint(model_path: str | os.PathLike, out_dir: str | os.PathLike) -> str:
    """What to run when the `.tflite` files are missing from `out_dir`: the converter, on `model_path`."""
    model_path, out_dir = Path(model_path), Path(out_dir)
    model = shlex.quote(str(model_path))
    if model_path == out_dir / KERAS_MODEL_NAME:  # what `make convert` and edge-convert's default --out do
        return f"convert the model first (make convert{_make_out(out_dir)}, or edge-convert --model {model})"
    return f"convert the model first (edge-convert --model {model} --out {shlex.quote(str(out_dir))})"


def check_keras_file(path: str | os.PathLike) -> Path:
    """Refuse a missing, empty or non-.keras file before TensorFlow is imported; ModelError says what to do."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such file; {train_first_hint(path)}")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder, not a Keras model file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: Keras model file is empty (0 bytes)")
    if path.suffix not in KERAS_SUFFIXES:
        raise ModelError(f"{path}: not a Keras model file (expected a {' or '.join(KERAS_SUFFIXES)} file)")
    if not zipfile.is_zipfile(path):
        raise ModelError(f"{path}: not a Keras model (the file is damaged or not a .keras archive)")
    return path


def load_keras_model(path: str | os.PathLike) -> Any:
    """Load a `.keras` model for inference; ModelError names the file when it is missing or damaged."""
    path = check_keras_file(path)
    import_tensorflow()
    import keras

    try:
        with native_output_to_log():  # the first op probes for GPUs and prints about it
            model = keras.models.load_model(path, compile=False)
    except Exception as error:  # Keras raises KeyError, ValueError, OSError... for a damaged archive
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"{path}: cannot load the Keras model ({reason})") from error
    check_model_shape(model, path)
    return model


def check_model_shape(model: Any, name: str | os.PathLike = "model") -> None:
    """Refuse a model that is not one image in, one vector of class scores out."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(f"{name}: has {len(model.inputs)} inputs and {len(model.outputs)} outputs, "
                         "expected one image input and one class-score output")
    input_shape = tuple(model.inputs[0].shape)
    output_shape = tuple(model.outputs[0].shape)
    if len(input_shape) != IMAGE_INPUT_RANK or input_shape[-1] != RGB_CHANNELS:
        raise ModelError(f"{name}: input shape {list(input_shape)} is not a batch of RGB images")
    if len(output_shape) != CLASS_OUTPUT_RANK:
        raise ModelError(f"{name}: output shape {list(output_shape)} is not a vector of class scores")


def model_num_classes(model: Any) -> int:
    """The number of classes the model scores (its output width)."""
    return int(model.outputs[0].shape[-1])


def model_input_size(model: Any) -> tuple[int, int]:
    """(height, width) of the model's image input."""
    shape = model.inputs[0].shape
    return int(shape[1]), int(shape[2])


def load_labels_for(model: Any, labels_path: str | os.PathLike) -> list[str]:
    """Read the labels and check there is one per model output; ModelError otherwise."""
    labels = read_labels(labels_path)
    classes = model_num_classes(model)
    if len(labels) != classes:
        raise ModelError(f"{labels_path}: {len(labels)} labels for a model with {classes} outputs "
                         "(the model and labels.txt come from different trainings?)")
    return labels


def spec_for_model(model: Any, spec: PreprocessSpec = DEFAULT_SPEC) -> PreprocessSpec:
    """The preprocessing to embed, checked against the model's input size."""
    height, width = model_input_size(model)
    if (height, width) != (spec.height, spec.width):
        raise ModelError(f"the model takes {width}x{height} images but the preprocessing gives "
                         f"{spec.width}x{spec.height}")
    return spec


def training_spec(model_path: str | os.PathLike, model: Any) -> PreprocessSpec:
    """The preprocessing the model was trained with: training.json's beside it, else (a model from
    elsewhere) the documented x / 255 at the model's input size."""
    recorded = read_training_info(model_path).get("preprocess")
    if isinstance(recorded, dict):
        try:
            return PreprocessSpec.from_dict(recorded)
        except (TypeError, ValueError) as error:
            raise DataError(f"{Path(model_path).parent / TRAINING_INFO_NAME}: unusable preprocessing "
                            f"({error})") from error
    height, width = model_input_size(model)
    return dataclasses.replace(DEFAULT_SPEC, height=height, width=width)


def check_calibration_size(size: int) -> None:
    """Refuse an empty calibration set before any data is loaded."""
    if size <= 0:
        raise DataError(f"empty calibration set: the calibration size is {size}; "
                        "int8 needs at least one training image")


def calibration_indices(num_train: int, size: int, seed: int) -> np.ndarray:
    """Indices of the training images used for calibration: `size` distinct ones drawn with `seed`.

    Fewer when there are fewer training images. Sorted, so the calibration order does not depend
    on how numpy's sampler orders its draw.
    """
    check_calibration_size(size)
    if num_train <= 0:
        raise DataError("empty calibration set: the data set has no training images")
    count = min(size, num_train)
    if count < size:
        logger.info("calibration size %d is more than the %d training images; using all of them", size, num_train)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(num_train, size=count, replace=False))


def calibration_batch(train_images: np.ndarray, size: int, seed: int,
                      spec: PreprocessSpec = DEFAULT_SPEC) -> np.ndarray:
    """The calibration images as the network sees them: float32 [n, height, width, 3].

    Only `train_images` is ever passed here; the test set has no way in.
    """
    train_images = np.asarray(train_images)
    if train_images.ndim != IMAGE_INPUT_RANK or train_images.shape[1:] != (spec.height, spec.width, RGB_CHANNELS):
        raise DataError(f"training images have shape {list(train_images.shape)}, expected "
                        f"[N, {spec.height}, {spec.width}, {RGB_CHANNELS}]")
    if train_images.dtype != np.uint8:
        raise DataError(f"training images are {train_images.dtype}, expected uint8 pixels")
    indices = calibration_indices(len(train_images), size, seed)
    return scale_pixels(train_images[indices], spec)


def representative_dataset(calibration: np.ndarray) -> Callable[[], Iterator[list[np.ndarray]]]:
    """The generator factory the TFLite converter calls: one image (batch of one) at a time."""
    def samples() -> Iterator[list[np.ndarray]]:
        for index in range(len(calibration)):
            yield [calibration[index:index + 1]]

    return samples


def export_saved_model(model: Any, folder: str | os.PathLike) -> None:
    """Export the Keras model's inference-mode function (what `predict` runs) as a SavedModel."""
    with native_output_to_log():
        model.export(os.fspath(folder), format="tf_saved_model", verbose=False)


def needs_calibration(variants: Iterable[str]) -> bool:
    """True when a full-integer variant (int8, uint8) is asked for: those need calibration images."""
    return any(variant in FULL_INTEGER for variant in variants)


def convert_variant(saved_model_dir: str | os.PathLike, variant: str,
                    calibration: np.ndarray | None = None) -> bytes:
    """Convert an exported SavedModel to one TFLite variant; int8 and uint8 need the calibration images."""
    tf = import_tensorflow()
    converter = tf.lite.TFLiteConverter.from_saved_model(os.fspath(saved_model_dir))
    if variant == FLOAT32:
        pass
    elif variant in FULL_INTEGER:
        if calibration is None or len(calibration) == 0:
            raise DataError(f"empty calibration set: {variant} conversion needs calibration images")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset(calibration)
        # Builtin int8 kernels only: conversion fails rather than fall back to a float op.
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # uint8 only changes the model's edges: a quantize op in, a dequantize-requantize op out.
        io_type = tf.int8 if variant == INT8 else tf.uint8
        converter.inference_input_type = io_type
        converter.inference_output_type = io_type
    elif variant == DYNAMIC:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == FLOAT16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    else:
        raise ValueError(f"unknown variant {variant!r}")
    try:
        with native_output_to_log():
            return bytes(converter.convert())
    except Exception as error:  # the converter raises ConverterError, RuntimeError, ValueError...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"TFLite conversion to {variant} failed ({reason})") from error





def check_int8_tensors(model_bytes: bytes, variant: str = INT8) -> None:
    """Confirm a full-integer model really takes and returns int8 (or uint8 for the uint8 variant)."""
    _, interpreter_class = load_interpreter_class()
    interpreter = interpreter_class(model_content=model_bytes)
    for kind, details in (("input", interpreter.get_input_details()), ("output", interpreter.get_output_details())):
        dtypes = {np.dtype(tensor["dtype"]).name for tensor in details}
        if dtypes != {variant}:
            raise ModelError(f"{variant} conversion produced a {'/'.join(sorted(dtypes))} {kind} tensor, "
                             f"not {variant}")


def bytes_sha256(data: bytes) -> str:
    """Hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()


def _quiet(message: str) -> None:
    logger.info("%s", message)


def convert_model(model_path: str | os.PathLike, out_dir: str | os.PathLike,
                  labels_path: str | os.PathLike | None = None,
                  variants: Sequence[str] = DEFAULT_VARIANTS,
                  train_images: np.ndarray | None = None,
                  calibration_size: int = DEFAULT_CALIBRATION_SIZE,
                  seed: int | None = None,
                  spec: PreprocessSpec | None = None,
                  data_source: str | None = None,
                  model: Any = None,
                  clip_logits: bool = True,
                  progress: Progress = _quiet,
                  train_available: int | None = None) -> ConversionResult:
    """Convert `model_path` to each variant in `out_dir`, then write the manifest.

    `train_images` (uint8 [N, H, W, 3]) and `seed` are needed only for int8; they may be the whole
    training split, or only the images the calibration draw picked out of `train_available` (the draw
    over those then takes them all, in order). `model` may be the
    already-loaded Keras model of `model_path` (saves loading it twice). `spec` None embeds (and
    calibrates with) the preprocessing the model was trained with (`training_spec`). `clip_logits` quantizes
    int8's logits over the range that decides the answer (see converter.logit_range); False keeps
    plain min/max calibration. Raises ModelError or DataError with one line naming the problem.
    """
    variants = parse_variants(variants)
    model_path = Path(model_path)
    out_dir = Path(out_dir)
    labels_path = Path(labels_path) if labels_path is not None else model_path.parent / LABELS_NAME
    if model is None:
        progress(f"Loading {model_path}")
        model = load_keras_model(model_path)
    labels = load_labels_for(model, labels_path)
    spec = spec_for_model(model, spec if spec is not None else training_spec(model_path, model))
    source_sha256 = sha256_file(model_path)

    calibration, bounds = None, None
    if needs_calibration(variants):
        if train_images is None:
            raise DataError("empty calibration set: int8 and uint8 need training images to calibrate with")
        if seed is None:
            raise DataError("int8 calibration needs a seed (none given and none in training.json)")
        calibration = calibration_batch(train_images, calibration_size, seed, spec)
        available = train_available if train_available is not None else len(train_images)
        progress(f"Calibration: {len(calibration)} of {available:,} training images, seed {seed}")
        bounds = int8_logit_range(model, calibration, progress) if clip_logits else None

    converted_bytes: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="edge-convert-") as workdir:
        saved_model = Path(workdir) / "saved_model"
        progress("Exporting the inference graph")
        export_saved_model(model, saved_model)
        for variant in variants:
            progress(f"Converting {variant}")
            source = saved_model
            full_integer = variant in FULL_INTEGER
            if full_integer and bounds is not None:
                source = Path(workdir) / "saved_model_clipped"
                if not source.exists():  # int8 and uint8 share the clipped graph
                    export_saved_model(clipped_model(model, bounds), source)
            tflite = convert_variant(source, variant, calibration if full_integer else None)
            if full_integer:
                check_int8_tensors(tflite, variant)
            info = _variant_info(variant, model_path.name, source_sha256, calibration, seed, bounds)
            description = _description(variant, model_path.name, source_sha256, labels, spec)
            tflite = attach_metadata_buffer(tflite, metadata_flatbuffer(description))
            converted_bytes[variant] = embed_metadata(tflite, ModelMetadata(labels=labels, preprocess=spec, info=info))
            check_official_metadata(converted_bytes[variant], description, model_file_name(variant))

    # Every variant converted before any file is replaced: a failed conversion leaves the old set whole.
    models: list[ConvertedModel] = []
    for variant, data in converted_bytes.items():
        path = out_dir / model_file_name(variant)
        write_bytes(path, data)
        models.append(ConvertedModel(variant=variant, path=path, size=len(data), sha256=bytes_sha256(data)))
        progress(f"Wrote {path} ({_kib(len(data))})")

    float_size = next((m.size for m in models if m.variant == FLOAT32), None)
    if float_size:
        for converted in models:
            if converted.variant != FLOAT32:
                progress(f"{converted.variant}: {converted.size / float_size:.1%} of the float32 size")
    calibration_info = _calibration_info(calibration, seed, data_source, bounds)
    manifest = write_manifest(out_dir, [model_file_name(m.variant) for m in models], extra={
        "source_model": model_path.name,
        "source_model_sha256": source_sha256,
        "variants": list(variants),
        "labels": labels,
        "calibration": calibration_info,
    })
    progress(f"Wrote {manifest}")
    return ConversionResult(models=models, manifest=manifest, source_sha256=source_sha256,
                            calibration_count=0 if calibration is None else len(calibration),
                            calibration_seed=seed if calibration is not None else None)


def int8_logit_range(model: Any, calibration: np.ndarray, progress: Progress = _quiet) -> LogitRange | None:
    """The int8 logit range measured on the calibration images; None for a model without a softmax head."""
    if softmax_head(model) is None:
        progress("int8 logits: plain min/max calibration (the model does not end in a Dense softmax layer)")
        return None
    with native_output_to_log():
        bounds = logit_range(calibration_logits(model, calibration))
    progress(f"int8 logits quantized from {bounds.low:g} (lowest winning logit {bounds.lowest_winner:.2f} "
             f"- ln 256) up to at most {bounds.high:g} (highest logit)")
    return bounds


def _calibration_info(calibration: np.ndarray | None, seed: int | None, data_source: str | None,
                      bounds: LogitRange | None = None) -> dict[str, Any] | None:
    if calibration is None:
        return None
    return {"count": int(len(calibration)), "seed": seed, "split": "train", "data": data_source,
            "logit_range": _range_info(bounds)}


def _range_info(bounds: LogitRange | None) -> dict[str, Any]:
    return bounds.as_dict() if bounds is not None else {"rule": "min/max of the calibration images"}


def _variant_info(variant: str, source_name: str, source_sha256: str, calibration: np.ndarray | None,
                  seed: int | None, bounds: LogitRange | None = None) -> dict[str, Any]:
    """model_info.json of one file; no timestamps or paths, so the same inputs give the same bytes."""
    tf = import_tensorflow()
    info: dict[str, Any] = {
        "variant": variant,
        "description": VARIANT_DESCRIPTIONS[variant],
        "source_model": source_name,
        "source_model_sha256": source_sha256,
        "converter": CONVERTER_NAME,
        "tensorflow_version": tf.__version__,
    }
    if variant in FULL_INTEGER:
        info["calibration"] = {"count": int(len(calibration)), "seed": seed, "split": "train",
                               "logit_range": _range_info(bounds)}
    return info


def _description(variant: str, source_name: str, source_sha256: str, labels: list[str],
                 spec: PreprocessSpec) -> ModelDescription:
    """The official metadata's account of one export: no timestamps, so the same inputs give the same bytes."""
    return ModelDescription(
        name=MODEL_NAME_TEMPLATE.format(variant=variant),
        description=(f"Classifies {spec.width}x{spec.height} RGB images into {len(labels)} classes. "
                     f"{VARIANT_DESCRIPTIONS[variant].capitalize()}. Converted from {source_name} "
                     f"(sha256 {source_sha256[:SHORT_HASH]})."),
        version=f"sha256:{source_sha256[:SHORT_HASH]}",
        labels=labels, width=spec.width, height=spec.height, normalization=spec_normalization(spec))


def _kib(size: int) -> str:
    return f"{size / 1024:.1f} KiB"


def read_training_info(model_path: str | os.PathLike) -> dict[str, Any]:
    """`training.json` beside the model ({} when there is none); DataError when it is unreadable."""
    path = Path(model_path).parent / TRAINING_INFO_NAME
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: not a readable training record ({error})") from error
    if not isinstance(data, dict):
        raise DataError(f"{path}: not a training record (expected a JSON object)")
    return data


@dataclasses.dataclass(frozen=True)
class DataChoice:
    """Which data set to load, how it was split in training, and the seed that draws samples from it."""

    source: str | None  # None: CIFAR-10 through Keras, the trainer's default
    seed: int  # draws the calibration images (and the report's --max-images sample)
    split_seed: int  # splits a single class-folder tree into train and test, as in training
    test_fraction: float | None  # likewise; None: the loader's default
    origin: str  # where the choice came from, for messages

    def describe(self) -> str:
        where = self.source if self.source is not None else "CIFAR-10 through Keras"
        split = f", split seed {self.split_seed}" if self.split_seed != self.seed else ""
        return f"{where} (seed {self.seed}{split}, from {self.origin})"


def resolve_data(model_path: str | os.PathLike, data: str | os.PathLike | None = None,
                 seed: int | None = None) -> DataChoice:
    """The data set and seed: the options when given, else what training.json beside the model records.

    The train/test split always follows training.json when there is one (its seed and test
    fraction), whatever `seed` says: a single image tree is then split into exactly the training
    run's train and test images, so calibration can never draw one of its test images.
    """
    info = read_training_info(model_path)
    config = info.get("config") if isinstance(info.get("config"), dict) else {}
    test_fraction = config.get("test_fraction")
    training_seed = info.get("seed", config.get("seed"))
    if data is not None:
        origin = "the command line"
        source: str | None = os.fspath(data)
    elif info:
        origin = f"{Path(model_path).parent / TRAINING_INFO_NAME}"
        source = config.get("data")
    else:
        raise DataError(f"no data set given and no {TRAINING_INFO_NAME} beside {model_path} to say which "
                        f"data the model was trained on (pass {knob('--data', 'PATH')})")
    for name, value in (("seed", training_seed), ("test fraction", test_fraction)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DataError(f"{Path(model_path).parent / TRAINING_INFO_NAME}: {name} {value!r} is not a number")
    if training_seed is None:
        from trainer.dataset import DEFAULT_SEED

        training_seed = seed if seed is not None else DEFAULT_SEED
    return DataChoice(source=source, seed=int(seed if seed is not None else training_seed),
                      split_seed=int(training_seed),
                      test_fraction=float(test_fraction) if test_fraction is not None else None, origin=origin)


def load_data(choice: DataChoice, quiet: bool = False, splits: Sequence[str] = ("train", "test"),
              spec: PreprocessSpec = DEFAULT_SPEC, pick: Callable[[str, int], np.ndarray] | None = None) -> Any:
    """Load the data set through the trainer's loader (the same decoding, at `spec`'s size, and split as in
    training).

    `splits` names what the caller needs ("train" for calibration, "test" for the report); a
    train/ + test/ image tree then decodes only those files, and with `pick` (split, count) -> indices
    only the picked ones (the calibration draw, the report's --max-images sample).
    """
    from trainer.progress import Progress as LoadProgress
    from trainer.sources import load_dataset

    kwargs: dict[str, Any] = {"seed": choice.split_seed, "progress": LoadProgress(quiet=quiet), "splits": splits,
                              "spec": spec, "pick": pick}
    if choice.test_fraction is not None:
        kwargs["test_fraction"] = choice.test_fraction
    return load_dataset(choice.source, **kwargs)
