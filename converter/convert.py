"""Keras model to TFLite: float32, full-integer int8 and optional extra variants.

Every variant is converted from a SavedModel export of the Keras model, gets the labels and the
preprocessing specification embedded (`edge_runtime.model_file.metadata`), and is written atomically; a
`manifest.json` beside them records each file's size and sha256.

The int8 variant is full-integer post-training quantization: int8 weights and activations, int8
input and output tensors, builtin int8 ops only. Its calibration images are drawn with a seed from
the training images only and go through `edge_runtime.preprocess.scale_pixels`, the function the
trainer feeds the network with, so the same seed always gives the same file. Its logits are
quantized over the range that decides the answer rather than their full min/max (the int8 graph is
softmax(clip(logits)); see `converter.logit_range`), which makes their int8 step about half as
large (0.17 instead of 0.30 on the recipe's model), and a whole-map average pool before the head is
converted as a mean, so the pooled features get an int8 range of their own (`converter.int8_graph`).
The optional uint8 variant is the same quantization with uint8 input and output tensors, for tools
that take no int8 tensors (MediaPipe).

Every file also carries the official TFLite metadata (`converter.official_metadata`): name,
input normalization and colour space, labels, so tools of the TFLite ecosystem read it too.

Given the calibration images' files, one of them is copied beside the models as the smoke-test image
that every written model labels right (`converter.smoke_image`), listed in the manifest with its
sha256 and named by its `smoke_test` entry, which the deploy role classifies on each device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from converter.artifacts import LABELS_NAME, model_file_name
from converter.calibration import DEFAULT_CALIBRATION_SIZE, calibration_batch, calibration_indices
from converter.int8_graph import int8_graph, pooling_info, whole_map_pool
from converter.logit_range import LogitRange, calibration_logits, logit_range, softmax_head
from converter.official_metadata import (ModelDescription, attach_metadata_buffer, check_official_metadata,
                                         metadata_flatbuffer, spec_normalization)
from converter.smoke_image import (SmokeImage, SmokeSource, choose_smoke_image, png_candidates, smoke_candidates,
                                   stale_smoke_image, write_smoke_image)
from converter.source_model import load_keras_model, load_labels_for, spec_for_model, training_spec
from converter.tflite_export import check_int8_tensors, convert_variant, export_saved_model
from converter.variants import (DEFAULT_VARIANTS, FLOAT32, FULL_INTEGER, VARIANT_DESCRIPTIONS, needs_calibration,
                                parse_variants)
from edge_runtime.atomic import write_bytes
from edge_runtime.errors import DataError, EdgeError, ModelError
from edge_runtime.model_file.manifest import MANIFEST_NAME, read_manifest, sha256_file, write_manifest
from edge_runtime.model_file.metadata import ModelMetadata, embed_metadata
from edge_runtime.preprocess import PreprocessSpec
from trainer.tensorflow_env import import_tensorflow, native_output_to_log

logger = logging.getLogger(__name__)

CONVERTER_NAME = "edge-image-toolkit converter"
MODEL_NAME_TEMPLATE = "edge-image-toolkit image classifier ({variant})"  # the official metadata's name
SHORT_HASH = 12  # hex digits of the source model's sha256 that name its version in the official metadata

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
    """What `convert_model` wrote: the models in variant order, the manifest and the smoke image (if any)."""

    models: list[ConvertedModel]
    manifest: Path
    source_sha256: str
    calibration_count: int
    calibration_seed: int | None
    smoke_image: SmokeImage | None = None

    def model(self, variant: str) -> ConvertedModel:
        """The written model of one variant (KeyError when it was not converted)."""
        for converted in self.models:
            if converted.variant == variant:
                return converted
        raise KeyError(variant)


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
                  mean_pool: bool = True,
                  progress: Progress = _quiet,
                  train_available: int | None = None,
                  smoke_source: SmokeSource | None = None) -> ConversionResult:
    """Convert `model_path` to each variant in `out_dir`, then write the manifest.

    `train_images` (uint8 [N, H, W, 3]) and `seed` are needed only for int8; they may be the whole
    training split, or only the images the calibration draw picked out of `train_available` (the draw
    over those then takes them all, in order). `model` may be the
    already-loaded Keras model of `model_path` (saves loading it twice). `spec` None embeds (and
    calibrates with) the preprocessing the model was trained with (`training_spec`). `clip_logits` quantizes
    int8's logits over the range that decides the answer (see converter.logit_range); False keeps
    plain min/max calibration. `mean_pool` converts a whole-map average pool before the head as a mean, so
    the pooled features get their own int8 range (see converter.int8_graph); False, for measurements only,
    keeps the pool. `smoke_source` names the files and class names of `train_images`, image
    for image: the smoke-test image is chosen among the calibration images drawn from them (among all of
    them without calibration); None bundles none. Raises ModelError or DataError with one line naming
    the problem.
    """
    variants = parse_variants(variants)
    if smoke_source is not None and train_images is not None and len(smoke_source.labels) != len(train_images):
        raise ValueError(f"smoke_source names {len(smoke_source.labels)} images, train_images has {len(train_images)}")
    model_path = Path(model_path)
    out_dir = Path(out_dir)
    labels_path = Path(labels_path) if labels_path is not None else model_path.parent / LABELS_NAME
    if model is None:
        progress(f"Loading {model_path}")
        model = load_keras_model(model_path)
    labels = load_labels_for(model, labels_path)
    spec = spec_for_model(model, spec if spec is not None else training_spec(model_path, model))
    source_sha256 = sha256_file(model_path)

    calibration, bounds, pool = None, None, None
    if needs_calibration(variants):
        if train_images is None:
            raise DataError("empty calibration set: int8 and uint8 need training images to calibrate with")
        if seed is None:
            raise DataError("int8 calibration needs a seed (none given and none in training.json)")
        calibration = calibration_batch(train_images, calibration_size, seed, spec)
        available = train_available if train_available is not None else len(train_images)
        progress(f"Calibration: {len(calibration)} of {available:,} training images, seed {seed}")
        bounds = int8_logit_range(model, calibration, progress) if clip_logits else None
        pool = whole_map_pool(model) if mean_pool else None
        if pool is not None:
            progress(f"int8 graph: the average pool {pool.name!r} over the whole map is converted as a mean, "
                     "so the pooled features get their own int8 range")

    converted_bytes: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="edge-convert-") as workdir:
        saved_model = Path(workdir) / "saved_model"
        progress("Exporting the inference graph")
        export_saved_model(model, saved_model)
        for variant in variants:
            progress(f"Converting {variant}")
            source = saved_model
            full_integer = variant in FULL_INTEGER
            if full_integer and (bounds is not None or pool is not None):
                source = Path(workdir) / "saved_model_int8"
                if not source.exists():  # int8 and uint8 share the int8 graph
                    export_saved_model(int8_graph(model, bounds, pool), source)
            tflite = convert_variant(source, variant, calibration if full_integer else None)
            if full_integer:
                check_int8_tensors(tflite, variant)
            info = _variant_info(variant, model_path.name, source_sha256, calibration, seed, bounds, pool)
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

    # The smoke image comes from the images calibration drew, the images this export has read.
    order = calibration_indices(len(train_images), calibration_size, seed) \
        if smoke_source is not None and calibration is not None else None
    smoke = bundle_smoke_image(out_dir, [m.path for m in models], smoke_source, order, progress)
    calibration_info = _calibration_info(calibration, seed, data_source, bounds, pool)
    manifest = _write_export_manifest(out_dir, models, smoke, {
        "source_model": model_path.name,
        "source_model_sha256": source_sha256,
        "variants": list(variants),
        "labels": labels,
        "calibration": calibration_info,
    }, progress)
    return ConversionResult(models=models, manifest=manifest, source_sha256=source_sha256,
                            calibration_count=0 if calibration is None else len(calibration),
                            calibration_seed=seed if calibration is not None else None, smoke_image=smoke)


def bundle_smoke_image(out_dir: Path, model_paths: Sequence[Path], source: SmokeSource | None,
                       order: Sequence[int] | None, progress: Progress = _quiet) -> SmokeImage | None:
    """Choose the smoke-test image among `source`'s images (in `order`) and copy it into `out_dir`.

    None, with one progress line saying why, when there is none to bundle: the export goes on
    without it (the deploy role then runs --verify and --info only).
    """
    with tempfile.TemporaryDirectory(prefix="edge-convert-smoke-") as pngs:
        from_arrays = source is not None and source.paths is None and source.images is not None
        if from_arrays:
            source, order = png_candidates(source, Path(pngs), order), None  # arrays: lossless PNG files
        candidates, reason = smoke_candidates(source, order)
        smoke = None
        if candidates:
            try:
                smoke, reason = choose_smoke_image(model_paths, candidates)
                if smoke is not None:
                    path = write_smoke_image(out_dir, smoke)
                    origin = f"image {smoke.source.stem} of {source.origin}" if from_arrays else smoke.source
                    if from_arrays:  # its PNG file goes with the temporary folder: the copy is the source now
                        smoke = dataclasses.replace(smoke, source=path)
                    progress(f"Wrote {path} (smoke-test image: {smoke.label}, from {origin}; "
                             f"smallest margin {smoke.margin:.2f} over {len(model_paths)} models)")
            except EdgeError as error:  # a smoke image is a check for later: it never fails the export
                smoke, reason = None, str(error)
    if smoke is None:
        progress(f"No smoke-test image: {reason}")
    return smoke


def _write_export_manifest(out_dir: Path, models: Sequence[ConvertedModel], smoke: SmokeImage | None,
                           extra: dict[str, Any], progress: Progress) -> Path:
    """manifest.json for the models and the smoke image (its `smoke_test` entry too); then the smoke image
    of the export it replaces goes, when this one bundles another or none."""
    previous_smoke = _previous_smoke_entry(out_dir)
    listed = [model_file_name(m.variant) for m in models]
    if smoke is not None:
        listed.append(smoke.name)
        extra = {**extra, "smoke_test": smoke.manifest_entry()}
    manifest = write_manifest(out_dir, listed, extra=extra)
    progress(f"Wrote {manifest}")
    stale = stale_smoke_image(out_dir, previous_smoke, smoke.name if smoke is not None else None)
    if stale is not None:  # removed only once no manifest names it
        stale.unlink()
        progress(f"Removed {stale} (the previous smoke-test image)")
    return manifest


def _previous_smoke_entry(out_dir: Path) -> object:
    """The `smoke_test` entry of the manifest this export replaces (None when there is none to read)."""
    path = out_dir / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return read_manifest(path).get("smoke_test")
    except ModelError:
        return None


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
                      bounds: LogitRange | None = None, pool: Any = None) -> dict[str, Any] | None:
    if calibration is None:
        return None
    return {"count": int(len(calibration)), "seed": seed, "split": "train", "data": data_source,
            **_int8_rules(bounds, pool)}


def _int8_rules(bounds: LogitRange | None, pool: Any) -> dict[str, Any]:
    """How the int8 graph differs from the Keras one: the logit range always, the pooling where it changed."""
    pooling = pooling_info(pool)
    return {"logit_range": _range_info(bounds), **({"pooling": pooling} if pooling is not None else {})}


def _range_info(bounds: LogitRange | None) -> dict[str, Any]:
    return bounds.as_dict() if bounds is not None else {"rule": "min/max of the calibration images"}


def _variant_info(variant: str, source_name: str, source_sha256: str, calibration: np.ndarray | None,
                  seed: int | None, bounds: LogitRange | None = None, pool: Any = None) -> dict[str, Any]:
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
                               **_int8_rules(bounds, pool)}
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
