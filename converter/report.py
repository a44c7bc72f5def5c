"""The quantization accuracy report: every format measured on the test set, side by side.

Keras is evaluated with `model.predict` on `scale_pixels` of the test images (what it was trained
on). Every `.tflite` file is evaluated through the edge runtime's own `Classifier`, one thread,
reading each test file with `Classifier.load` when the data set has files (exactly what a device
does) and feeding the uint8 arrays otherwise. The numbers are computed by small pure functions
from probability arrays, so they are tested without a model.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edge_runtime.errors import DataError, ModelError
from edge_runtime.model_file.manifest import MANIFEST_NAME, read_manifest
from edge_runtime.model_file.reader import ModelFile
from edge_runtime.preprocess import DEFAULT_SPEC, PreprocessSpec, scale_pixels

from trainer.outputs import one_class_answer

from .artifacts import KERAS_MODEL_NAME, convert_first_hint
from .variants import FLOAT32, INT8, VARIANTS

logger = logging.getLogger(__name__)

KERAS = "keras"
REPORT_FORMAT_VERSION = 1
LATENCY_THREADS = 1  # the device-like number: one interpreter thread
PERCENT = 100.0
KERAS_BATCH_SIZE = 256
# Batches of test images scaled to float32 at a time for Keras (a bounded copy, whatever the input size).
PREDICT_CHUNK_BATCHES = 4
SECONDS_TO_MS = 1000.0
MODEL_FILE_PREFIX = "model_"  # model_<variant>.tflite

Progress = Callable[[str], None]


def _quiet(message: str) -> None:
    logger.info("%s", message)


# --- pure metrics ---------------------------------------------------------------------------------

def top1(probabilities: np.ndarray) -> np.ndarray:
    """Index of the best class of each row; ties go to the lower index (like `top_classes`)."""
    return np.argmax(np.asarray(probabilities), axis=1)


def correct_count(predictions: np.ndarray, labels: np.ndarray) -> int:
    """How many predictions equal the labels."""
    return int(np.count_nonzero(np.asarray(predictions) == np.asarray(labels)))


def accuracy_change_pp(correct: int, reference_correct: int, total: int) -> float:
    """Accuracy change in percentage points, from counts so that 0.5 points is exactly 0.5."""
    return (correct - reference_correct) * PERCENT / total


def per_class_accuracy(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> list[float | None]:
    """Accuracy on each class's test images; None for a class without test images."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    result: list[float | None] = []
    for class_index in range(num_classes):
        members = labels == class_index
        total = int(np.count_nonzero(members))
        result.append(None if total == 0 else correct_count(predictions[members], labels[members]) / total)
    return result


def per_class_change_pp(accuracies: Sequence[float | None],
                        reference: Sequence[float | None]) -> list[float | None]:
    """Each class's accuracy minus the reference's, in percentage points; None where either is missing."""
    if len(accuracies) != len(reference):
        raise ValueError(f"{len(accuracies)} per-class accuracies against {len(reference)} reference ones")
    return [None if value is None or base is None else (value - base) * PERCENT
            for value, base in zip(accuracies, reference)]


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [true class, predicted class] (int64)."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)), 1)
    return matrix


@dataclasses.dataclass(frozen=True)
class FormatResult:
    """The numbers of one format (Keras or one `.tflite` file) on the test set."""

    name: str
    file: str | None
    size_bytes: int | None
    accuracy: float  # fraction of test images classified correctly
    correct: int
    accuracy_change_pp: float  # against Keras, percentage points
    agreement: float  # fraction of test images with the same top-1 class as Keras
    mean_abs_prob_diff: float  # mean over images and classes of |p - p_keras|
    max_abs_prob_diff: float
    per_class_accuracy: list[float | None]
    confusion: list[list[int]]
    latency_ms: float | None  # mean per-image scores() time through the runtime, one thread
    # The class index answered for every test image when the format answers one class only (and the
    # test images are of several): a model that has not learned to tell the classes apart.
    one_class_answer: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def compare_format(name: str, probabilities: np.ndarray, labels: np.ndarray,
                   reference_probabilities: np.ndarray, num_classes: int,
                   file: str | None = None, size_bytes: int | None = None,
                   latency_ms: float | None = None) -> FormatResult:
    """Measure one format's probabilities against the labels and against the reference (Keras)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    reference = np.asarray(reference_probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if probabilities.shape != reference.shape or probabilities.shape != (len(labels), num_classes):
        raise ValueError(f"{name}: probabilities of shape {probabilities.shape} do not match "
                         f"{len(labels)} images of {num_classes} classes")
    if len(labels) == 0:
        raise DataError("the test set is empty: nothing to evaluate")
    predictions = top1(probabilities)
    reference_predictions = top1(reference)
    correct = correct_count(predictions, labels)
    difference = np.abs(probabilities - reference)
    return FormatResult(
        name=name,
        file=file,
        size_bytes=size_bytes,
        accuracy=correct / len(labels),
        correct=correct,
        accuracy_change_pp=accuracy_change_pp(correct, correct_count(reference_predictions, labels), len(labels)),
        agreement=correct_count(predictions, reference_predictions) / len(labels),
        mean_abs_prob_diff=float(difference.mean()),
        max_abs_prob_diff=float(difference.max()),
        per_class_accuracy=per_class_accuracy(predictions, labels, num_classes),
        confusion=confusion_matrix(labels, predictions, num_classes).tolist(),
        latency_ms=latency_ms,
        one_class_answer=one_class_answer(predictions, labels),
    )


# --- the report -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Report:
    """Everything the report shows; `to_dict` is report.json."""

    labels: list[str]
    num_images: int
    data_source: str
    seed: int | None
    formats: list[FormatResult]
    backend: str | None
    threads: int = LATENCY_THREADS
    image_path: str = "arrays"  # "files" when the TFLite models read the test files themselves
    pixel_mismatches: int | None = None  # test files whose device pixels differ from the arrays
    notes: list[str] = dataclasses.field(default_factory=list)
    int8_calibration: dict[str, Any] | None = None  # as embedded in the int8 file by edge-convert

    def format(self, name: str) -> FormatResult | None:
        """The result of one format, or None when it was not evaluated."""
        return next((result for result in self.formats if result.name == name), None)

    def size_ratio(self, name: str, reference: str = FLOAT32) -> float | None:
        """File size of `name` as a fraction of `reference`'s."""
        result, base = self.format(name), self.format(reference)
        if result is None or base is None or not result.size_bytes or not base.size_bytes:
            return None
        return result.size_bytes / base.size_bytes

    def to_dict(self) -> dict[str, Any]:
        formats = []
        for result in self.formats:
            entry = result.to_dict()
            entry["size_vs_float32"] = self.size_ratio(result.name)
            formats.append(entry)
        return {
            "format_version": REPORT_FORMAT_VERSION,
            "data": {"source": self.data_source, "split": "test", "images": self.num_images,
                     "seed": self.seed, "tflite_input": self.image_path,
                     "pixel_mismatches": self.pixel_mismatches},
            "labels": self.labels,
            "runtime": {"backend": self.backend, "threads": self.threads},
            "reference": KERAS,
            "formats": formats,
            "int8_calibration": self.int8_calibration,
            "notes": self.notes,
        }


def tflite_models(folder: str | os.PathLike, model_path: str | os.PathLike | None = None) -> list[tuple[str, Path]]:
    """(variant, path) of the models to evaluate: those the manifest lists, else `model_<variant>.tflite`.

    Known variants come in VARIANTS order, any others after them by name, so the report's order
    never depends on the file system. `model_path` (default: model.keras in `folder`) is what the
    error tells to convert when there is nothing to evaluate.
    """
    folder = Path(folder)
    manifest_path = folder / MANIFEST_NAME
    if manifest_path.is_file():
        names = sorted(name for name in read_manifest(manifest_path)["files"] if name.endswith(".tflite"))
    else:
        names = sorted(path.name for path in folder.glob("*.tflite"))
    by_variant = {}
    for name in names:
        stem = Path(name).stem
        variant = stem[len(MODEL_FILE_PREFIX):] if stem.startswith(MODEL_FILE_PREFIX) else stem
        by_variant[variant] = folder / name
    order = [v for v in VARIANTS if v in by_variant] + sorted(v for v in by_variant if v not in VARIANTS)
    models = [(variant, by_variant[variant]) for variant in order]
    for variant, path in models:
        if not path.is_file():
            raise ModelError(f"{path}: listed in {manifest_path} but not found")
    if not models:
        source = model_path if model_path is not None else folder / KERAS_MODEL_NAME
        raise ModelError(f"{folder}: no .tflite models to evaluate; {convert_first_hint(source, folder)}")
    return models


def keras_probabilities(model: Any, images: np.ndarray, spec: PreprocessSpec = DEFAULT_SPEC,
                        batch_size: int = KERAS_BATCH_SIZE) -> np.ndarray:
    """Keras class probabilities on uint8 images, preprocessed exactly as in training.

    The images are scaled a chunk at a time, so large inputs never have a float32 copy of the whole set.
    """
    chunk = batch_size * PREDICT_CHUNK_BATCHES
    parts = [model.predict(scale_pixels(images[start:start + chunk], spec), batch_size=batch_size, verbose=0)
             for start in range(0, len(images), chunk)]
    if not parts:
        return np.zeros((0, int(model.outputs[0].shape[-1])), dtype=np.float32)
    return np.concatenate([np.asarray(part, dtype=np.float32) for part in parts])


@dataclasses.dataclass(frozen=True)
class RuntimeEvaluation:
    """Probabilities of one `.tflite` file through the edge runtime, with its timing."""

    probabilities: np.ndarray
    latency_ms: float
    backend: str
    spec: PreprocessSpec
    labels: list[str] | None


def runtime_probabilities(model_path: str | os.PathLike | ModelFile, images: np.ndarray | None = None,
                          paths: Sequence[str] | None = None,
                          pixel_cache: dict[PreprocessSpec, np.ndarray] | None = None,
                          threads: int = LATENCY_THREADS) -> RuntimeEvaluation:
    """Classify every test image through `edge_runtime.classify.Classifier`, as a device would.

    `model_path` is a path or an opened ModelFile, whose answers the Classifier uses rather than
    reading the file again. With `paths`, each file is read by `Classifier.load` (the model's own
    embedded preprocessing); `pixel_cache` keeps those pixels per preprocessing so several models
    read the files once.
    Latency is the mean time of `Classifier.scores` (input quantization, invoke, output
    dequantization) per image, after one untimed warm-up call.
    """
    from edge_runtime.classify import Classifier

    classifier = Classifier(model_path, threads=threads)
    if paths is not None:
        cache = pixel_cache if pixel_cache is not None else {}
        if classifier.spec not in cache:
            if not len(paths):
                raise DataError("the test set is empty: nothing to evaluate")
            cache[classifier.spec] = np.stack([classifier.load(path) for path in paths])
        pixels = cache[classifier.spec]
    elif images is not None:
        pixels = np.asarray(images, dtype=np.uint8)
    else:
        raise ValueError("give the test images or their paths")
    if len(pixels) == 0:
        raise DataError("the test set is empty: nothing to evaluate")
    probabilities = np.zeros((len(pixels), classifier.num_classes), dtype=np.float32)
    classifier.scores(pixels[0])  # warm-up: first-call allocations are not per-image cost
    elapsed = 0.0
    for index, image in enumerate(pixels):
        start = time.perf_counter()
        probabilities[index] = classifier.scores(image)
        elapsed += time.perf_counter() - start
    return RuntimeEvaluation(probabilities=probabilities, latency_ms=elapsed * SECONDS_TO_MS / len(pixels),
                             backend=classifier.backend, spec=classifier.spec, labels=classifier.labels)


def sample_indices(count: int, limit: int | None, seed: int | None) -> np.ndarray:
    """All indices, or `limit` of them drawn with `seed` (sorted) for a quick partial report."""
    if limit is None or limit >= count:
        return np.arange(count)
    if limit <= 0:
        raise DataError(f"cannot evaluate {limit} test images")
    rng = np.random.default_rng(seed if seed is not None else 0)
    return np.sort(rng.choice(count, size=limit, replace=False))


def provenance_notes(models: Sequence[tuple[str, Path | ModelFile]], keras_sha256: str | None) -> list[str]:
    """Warnings about files that are not what the report is meant to compare.

    A `.tflite` whose embedded source fingerprint is not the Keras model's was converted from
    another training (convert again); one that no longer matches manifest.json was changed since.
    """
    notes = []
    for _, model in models:
        model_file = ModelFile.of(model)
        path = Path(model_file.path)
        metadata = model_file.metadata
        source = metadata.info.get("source_model_sha256") if metadata is not None else None
        if keras_sha256 is not None and source is not None and source != keras_sha256:
            notes.append(f"{path.name} was converted from a different Keras model than the one evaluated "
                         "(run edge-convert again)")
        manifest = path.parent / MANIFEST_NAME
        if manifest.is_file():
            try:
                verification = model_file.verify(manifest)
            except ModelError as error:
                notes.append(str(error))
                continue
            if not verification.ok:
                notes.append(f"{path.name} does not match {MANIFEST_NAME}: " + "; ".join(verification.problems))
    return notes


def build_report(keras_model: Any, models: Sequence[tuple[str, Path]], test_images: np.ndarray,
                 test_labels: np.ndarray, class_names: Sequence[str],
                 test_paths: Sequence[str] | None = None, data_source: str = "",
                 seed: int | None = None, keras_sha256: str | None = None,
                 spec: PreprocessSpec = DEFAULT_SPEC, progress: Progress = _quiet) -> Report:
    """Evaluate Keras and each `(variant, path)` model on the test set and compare them.

    `spec` is how the test images (uint8 at its size) become the Keras model's inputs: the
    preprocessing it was trained with.
    `keras_sha256` (the Keras file's fingerprint) lets the report flag `.tflite` files converted
    from another model.
    """
    test_images = np.asarray(test_images, dtype=np.uint8)
    test_labels = np.asarray(test_labels, dtype=np.int64)
    labels = list(class_names)
    num_classes = len(labels)
    if len(test_labels) == 0:
        raise DataError("the test set is empty: nothing to evaluate")
    if test_paths is not None and len(test_paths) != len(test_labels):
        raise DataError(f"{len(test_paths)} test file paths for {len(test_labels)} test labels")
    keras_classes = int(keras_model.outputs[0].shape[-1])
    if keras_classes != num_classes:
        raise ModelError(f"the Keras model has {keras_classes} outputs but the test set has {num_classes} classes")

    # One ModelFile per model: the notes, the evaluation and the calibration ask it, and none reads the file again.
    opened = [(variant, ModelFile(path)) for variant, path in models]
    notes = provenance_notes(opened, keras_sha256)
    progress(f"Evaluating Keras on {len(test_labels):,} test images")
    keras_probs = keras_probabilities(keras_model, test_images, spec)
    results = [compare_format(KERAS, keras_probs, test_labels, keras_probs, num_classes)]
    pixel_cache: dict[PreprocessSpec, np.ndarray] = {}
    backend = None
    for (variant, path), (_, model_file) in zip(models, opened):
        progress(f"Evaluating {path.name} through the edge runtime ({LATENCY_THREADS} thread)")
        evaluation = runtime_probabilities(model_file, images=test_images, paths=test_paths, pixel_cache=pixel_cache)
        if evaluation.labels is not None and list(evaluation.labels) != labels:
            raise DataError(f"{path}: its labels ({', '.join(evaluation.labels)}) are not the test set's "
                            f"classes ({', '.join(labels)}) in the same order")
        backend = evaluation.backend
        results.append(compare_format(variant, evaluation.probabilities, test_labels, keras_probs, num_classes,
                                      file=path.name, size_bytes=path.stat().st_size,
                                      latency_ms=evaluation.latency_ms))
    mismatches = None
    if test_paths is not None and spec in pixel_cache:
        device_pixels = pixel_cache[spec]
        mismatches = int(np.count_nonzero(np.any(device_pixels != test_images, axis=(1, 2, 3))))
        if mismatches:
            notes.append(f"{mismatches} test files decode differently on the device path than in the "
                         "training data arrays Keras was evaluated on")
    if test_paths is None:
        notes.append("the data set has no image files: the TFLite models were fed the decoded uint8 arrays")
    return Report(labels=labels, num_images=len(test_labels), data_source=data_source, seed=seed,
                  formats=results, backend=backend, image_path="files" if test_paths is not None else "arrays",
                  pixel_mismatches=mismatches, notes=notes, int8_calibration=int8_calibration(opened))


def int8_calibration(models: Sequence[tuple[str, Path | ModelFile]]) -> dict[str, Any] | None:
    """How the int8 model was calibrated, from its embedded info (None without an int8 model or info)."""
    for variant, model in models:
        if variant == INT8:
            metadata = ModelFile.of(model).metadata
            calibration = metadata.info.get("calibration") if metadata is not None else None
            return calibration if isinstance(calibration, dict) else None
    return None


# --- thresholds -----------------------------------------------------------------------------------

def threshold_failures(report: Report, max_drop_pp: float | None = None,
                       min_agreement_percent: float | None = None, variant: str = INT8) -> list[str]:
    """One sentence per broken threshold for `variant` (int8): accuracy drop and agreement with Keras."""
    if max_drop_pp is None and min_agreement_percent is None:
        return []
    result = report.format(variant)
    if result is None:
        return [f"no {variant} model was evaluated, so its accuracy cannot be checked"]
    failures = []
    drop = -result.accuracy_change_pp
    if max_drop_pp is not None and drop > max_drop_pp:
        failures.append(f"{variant} loses {drop:.2f} percentage points of accuracy against Keras, "
                        f"more than the allowed {max_drop_pp:g}")
    agreement = result.agreement * PERCENT
    if min_agreement_percent is not None and agreement < min_agreement_percent:
        failures.append(f"{variant} agrees with Keras on {agreement:.2f}% of test images, "
                        f"less than the required {min_agreement_percent:g}%")
    return failures


def is_finite_number(value: Any) -> bool:
    """True for a real, finite number (for rendering None and NaN as a dash)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
