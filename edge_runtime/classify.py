"""Scores to classes, and a Classifier that holds one interpreter and feeds it images.

`top_classes` is pure (arrays in, named results out) so it needs no model to test. `Classifier`
owns the interpreter, the input quantization and the output dequantization; the CLI, the camera
loop, the report and the benchmarks all classify through it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import TYPE_CHECKING, Any, Callable, NamedTuple

import numpy as np

from .errors import ModelError
from .interpreter import make_interpreter
from .model_file.conventions import EMBEDDED, NORMALIZED_KINDS, QUANTIZED_PIXELS, InputRule
from .model_file.reader import ModelFile
from .preprocess import PIXEL_SCALE, Normalization, PreprocessSpec, load_image, scale_pixels

if TYPE_CHECKING:
    from .model_file.metadata import ModelMetadata
    from .model_file.official_metadata import OfficialMetadata

# uint8 pixel p maps exactly to int8 p - 128 when the input scale is 1/255 and zero point -128,
# which is what post-training quantization of x / 255 inputs produces.
INT8_PIXEL_ZERO_POINT = -128
UINT8_PIXEL_ZERO_POINT = 0
SCALE_TOLERANCE = 1e-6
IMAGE_TENSOR_RANK = 4
RESIZABLE_DIMENSION = -1  # a shape_signature entry the interpreter may resize


class Class(NamedTuple):
    """One class of a prediction: index, human label and probability-like score."""

    index: int
    label: str
    score: float


def top_classes(scores: np.ndarray, labels: list[str] | None = None, top_k: int = 1,
                threshold: float = 0.0) -> list[Class]:
    """The `top_k` best classes with score >= threshold, best first; ties keep index order."""
    scores = np.asarray(scores).reshape(-1)
    count = min(max(top_k, 0), scores.size)
    if count == 0:
        return []
    if count == 1:
        # The common case, on the per-image path: argmax also returns the first of equal scores.
        best = int(scores.argmax())
        score = float(scores[best])
        return [Class(best, label_for(best, labels), score)] if score >= threshold else []
    # Stable sort on the negated scores keeps equal scores in index order.
    order = np.argsort(-scores, kind="stable")[:count]
    return [Class(int(i), label_for(int(i), labels), float(scores[i]))
            for i in order if scores[i] >= threshold]


def label_for(index: int, labels: list[str] | None) -> str:
    """The label of a class index, or the index itself when there is no label for it."""
    if labels is not None and 0 <= index < len(labels):
        return labels[index]
    return str(index)


class TensorInfo(NamedTuple):
    """Shape, type and quantization of one model tensor."""

    index: int
    shape: tuple[int, ...]
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def quantized(self) -> bool:
        return self.dtype in (np.int8, np.uint8) and self.scale != 0.0


def _tensor_info(details: dict[str, Any]) -> TensorInfo:
    scale, zero_point = details.get("quantization", (0.0, 0))
    return TensorInfo(index=details["index"], shape=tuple(int(d) for d in details["shape"]),
                      dtype=np.dtype(details["dtype"]), scale=float(scale), zero_point=int(zero_point))


def make_input_quantizer(tensor: TensorInfo, spec: PreprocessSpec,
                         rule: InputRule | None = None) -> Callable[[np.ndarray], np.ndarray]:
    """The fastest exact mapping from uint8 pixels to the values of an input tensor of this type.

    `rule` says how pixels become real values (see `model_file.conventions`); without one, as `spec` says.
    Float inputs get those values. Quantized inputs get round(x / scale + zero_point) of them,
    with the tensor's own scale and zero point, except where that is the identity in disguise:
    scale 1/255 with zero point -128 (int8) or 0 (uint8) maps pixel p to p - 128 or p, which
    integer operations give exactly without a float detour. A quantized input of a model from
    elsewhere takes the pixels so whatever its scale and its metadata, as MediaPipe feeds a uint8
    input (`InputRule.feeds_pixel_codes`); only the user's --normalization requantizes it.
    """
    kind = rule.kind if rule is not None else EMBEDDED
    top_bit = np.uint8(0x80)
    if rule is not None and rule.feeds_pixel_codes(tensor.dtype):
        if tensor.dtype == np.uint8:
            return lambda pixels: pixels
        return lambda pixels: (pixels ^ top_bit).view(np.int8)  # p - 128: flip the top bit
    if kind in NORMALIZED_KINDS and rule is not None and rule.normalization is not None:
        to_real = rule.normalize
    else:
        def to_real(pixels: np.ndarray) -> np.ndarray:
            return scale_pixels(pixels, spec)
    if tensor.dtype == np.float32:
        return to_real
    default_scaling = kind not in NORMALIZED_KINDS and spec.scale == 1.0 / PIXEL_SCALE and spec.offset == 0.0
    exact_scale = default_scaling and abs(tensor.scale * PIXEL_SCALE - 1.0) < SCALE_TOLERANCE
    if tensor.dtype == np.int8 and exact_scale and tensor.zero_point == INT8_PIXEL_ZERO_POINT:
        return lambda pixels: (pixels ^ top_bit).view(np.int8)
    if tensor.dtype == np.uint8 and exact_scale and tensor.zero_point == UINT8_PIXEL_ZERO_POINT:
        return lambda pixels: pixels
    if tensor.dtype not in (np.int8, np.uint8) or tensor.scale == 0.0:
        raise ModelError(f"input tensor of type {tensor.dtype} has no usable quantization "
                         f"(scale {tensor.scale}, zero point {tensor.zero_point})")
    info = np.iinfo(tensor.dtype)
    input_scale = np.float32(tensor.scale)
    zero_point = np.float32(tensor.zero_point)

    def quantize(pixels: np.ndarray) -> np.ndarray:
        values = to_real(pixels) / input_scale + zero_point
        return np.clip(np.round(values), info.min, info.max).astype(tensor.dtype)

    return quantize


def dequantization_table(tensor: TensorInfo) -> np.ndarray:
    """scale * (q - zero_point) in float32 for every 8-bit value q, indexed by q's byte.

    One table lookup per score replaces three array operations per image; the values are the
    same float32 numbers (q - zero_point is a small integer, exact in float32).
    """
    codes = np.arange(256, dtype=np.uint8).view(tensor.dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # a damaged scale is refused below, not warned about
        table = (codes.astype(np.float32) - np.float32(tensor.zero_point)) * np.float32(tensor.scale)
    if not np.isfinite(table).all():
        raise ModelError(f"output quantization (scale {tensor.scale:g}, zero point {tensor.zero_point}) "
                         "gives scores that are not finite numbers")
    return table


class Classifier:
    """One TFLite image classifier: build once, call `scores` or `classify` for every image.

    What the model's file says decides its preprocessing and labels (see `model_file.conventions`): our
    embedded metadata, else the official TFLite metadata, else the TFLite conventions;
    `labels_path` serves a model that carries no labels, `normalization` overrides the input rule.
    `model_path` is a path or a `ModelFile` already opened, whose answers are used, not read again.
    """

    def __init__(self, model_path: str | os.PathLike | ModelFile, threads: int | None = 1,
                 backend: str | None = None, labels_path: str | os.PathLike | None = None,
                 normalization: Normalization | None = None):
        self.model_file = ModelFile.of(model_path)
        self.model_path = self.model_file.path  # a str: pathlib is not imported on this path
        model_path = self.model_path  # what the messages below name
        self.backend, self._interpreter = make_interpreter(model_path, threads=threads, backend=backend)
        self.threads = threads
        try:
            self.metadata: ModelMetadata | None = self.model_file.metadata
            # Our own metadata says everything classification needs; the official one is read
            # (and its parser imported) only for models from elsewhere.
            self.official: OfficialMetadata | None = self.model_file.official_in_use
            self.model_file.release_data()  # read for the official metadata: the interpreter has its own
        except OSError as error:
            raise ModelError(f"{model_path}: cannot read the model file ({error.strerror or error})") from error
        inputs, outputs = self._interpreter.get_input_details(), self._interpreter.get_output_details()
        if not inputs or not outputs:
            raise ModelError(f"{model_path}: the model has {len(inputs)} inputs and {len(outputs)} outputs, "
                             "not an image in and class scores out")
        self.input = _tensor_info(inputs[0])
        self.output = _tensor_info(outputs[0])
        signature = inputs[0].get("shape_signature")
        # Models converted with a fixed batch say 1 here; only -1 may be resized.
        self.batch_resizable = signature is not None and len(signature) > 0 and int(signature[0]) == RESIZABLE_DIMENSION
        self.batch_size = 1
        self._batch_input: np.ndarray | None = None
        self._check_tensors()
        height, width = self.input.shape[1], self.input.shape[2]
        rule = self.model_file.input_rule(self.input.dtype, height, width, normalization)
        if (height, width) != (rule.spec.height, rule.spec.width):
            # Embedded metadata that disagrees with the tensor: resize to what the tensor wants.
            rule = rule._replace(spec=dataclasses.replace(rule.spec, height=height, width=width))
        self.input_rule: InputRule = rule
        self.spec: PreprocessSpec = rule.spec
        choice = self.model_file.labels(labels_path)
        self.labels: list[str] | None = choice.labels
        self.labels_source = choice.source
        self.labels_from_model = choice.from_model
        if self.labels is not None and len(self.labels) != self.num_classes:
            where = model_path if choice.from_model else self.labels_source
            raise ModelError(f"{where}: {len(self.labels)} labels for a model with {self.num_classes} classes")
        self._input_batch_shape = self.input.shape
        self._quantize = make_input_quantizer(self.input, self.spec, self.input_rule)
        self._input_values = self._make_input_writer()
        try:
            self._score_table = dequantization_table(self.output) if self.output.quantized else None
        except ModelError as error:
            raise ModelError(f"{model_path}: {error}") from error
        calibration = self.official.score_calibration if self.official else None
        if calibration is not None and len(calibration.parameters) != self.num_classes:
            raise ModelError(f"{model_path}: the TFLite metadata calibrates {len(calibration.parameters)} scores "
                             f"for a model with {self.num_classes} classes")
        self._calibrate = calibration.apply if calibration is not None else None

    @property
    def notice(self) -> str | None:
        """One line to tell the user when the input normalization was guessed; None otherwise."""
        if not self.input_rule.guessed:
            return None
        return (f"{self.model_path} carries no normalization metadata: guessing pixel / 255 (inputs in [0, 1]) "
                "for its float input; answers may be wrong if the model expects another range")

    def _check_tensors(self) -> None:
        shape = self.input.shape
        if len(shape) != IMAGE_TENSOR_RANK or shape[0] != 1 or shape[3] != 3:
            raise ModelError(f"{self.model_path}: input tensor has shape {list(shape)}, "
                             "not an image of shape [1, height, width, 3]")
        if self.input.dtype not in (np.float32, np.int8, np.uint8):
            raise ModelError(f"{self.model_path}: unsupported input type {self.input.dtype}")
        if self.official is not None and self.official.color_space == "GRAYSCALE":
            raise ModelError(f"{self.model_path}: the TFLite metadata says the input is GRAYSCALE; "
                             "edge-classify feeds RGB images only")
        if self.output.dtype not in (np.float32, np.int8, np.uint8) or len(self.output.shape) != 2:
            raise ModelError(f"{self.model_path}: output tensor {list(self.output.shape)} of type "
                             f"{self.output.dtype} is not a vector of class scores")

    @property
    def num_classes(self) -> int:
        return int(self.output.shape[-1])

    @property
    def input_size(self) -> tuple[int, int]:
        """(width, height) of the model's input."""
        return self.spec.width, self.spec.height

    def _make_input_writer(self) -> Callable[[np.ndarray], np.ndarray]:
        """pixels -> the batch-of-one input array, for `scores` only.

        For the two common exact cases (int8 at scale 1/255, zero point -128; float x / 255) the
        values are written into one buffer reused for every image, saving an allocation and a
        reshape per call; set_tensor copies the buffer into the interpreter right away.
        """
        tensor, spec, kind = self.input, self.spec, self.input_rule.kind
        default_scaling = kind not in NORMALIZED_KINDS and spec.scale == 1.0 / PIXEL_SCALE and spec.offset == 0.0
        pixel_codes = self.input_rule.feeds_pixel_codes(tensor.dtype) or (
            tensor.zero_point == INT8_PIXEL_ZERO_POINT and default_scaling
            and abs(tensor.scale * PIXEL_SCALE - 1.0) < SCALE_TOLERANCE)
        if tensor.dtype == np.int8 and pixel_codes:
            batch = np.empty(tensor.shape, dtype=np.uint8)
            image, values, top_bit = batch[0], batch.view(np.int8), np.uint8(0x80)

            def write_int8(pixels: np.ndarray) -> np.ndarray:
                np.bitwise_xor(pixels, top_bit, out=image)  # p - 128, as in make_input_quantizer
                return values

            return write_int8
        if tensor.dtype == np.float32 and default_scaling and kind != QUANTIZED_PIXELS:
            batch = np.empty(tensor.shape, dtype=np.float32)
            image, pixel_scale = batch[0], np.float32(PIXEL_SCALE)

            def write_float(pixels: np.ndarray) -> np.ndarray:
                np.divide(pixels, pixel_scale, out=image)  # x / 255 in float32, as scale_pixels
                return batch

            return write_float
        return self.quantize_input

    def quantize_input(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (height, width, 3) to the input tensor's values, batch of one."""
        return self._quantize(pixels).reshape(self._input_batch_shape)

    def scores(self, pixels: np.ndarray) -> np.ndarray:
        """Class scores (float32, dequantized) for one preprocessed uint8 image.

        ModelError (one line) when the interpreter fails to run the model: a damaged graph can
        load and fail only here.
        """
        interpreter = self._interpreter
        try:
            interpreter.set_tensor(self.input.index, self._input_values(pixels))
            interpreter.invoke()
        except (RuntimeError, ValueError) as error:  # the model's fault, not the image's
            raise cannot_run(self.model_path, self.backend, error) from error
        raw = interpreter.get_tensor(self.output.index)[0]
        scores = self._score_table.take(raw.view(np.uint8)) if self._score_table is not None else raw
        return self._calibrate(scores) if self._calibrate is not None else scores

    def use_batches(self, size: int) -> int:
        """Let `scores_batch` take up to `size` images per invoke; returns the batch size in use.

        Only a model whose input `shape_signature` has -1 in the batch dimension can be resized;
        any other keeps 1. Call it once, before classifying: XNNPACK re-initialises on every
        resize, and `scores` (one image) no longer applies afterwards.
        """
        if size <= 1 or not self.batch_resizable or size == self.batch_size:
            return self.batch_size
        interpreter = self._interpreter
        try:
            interpreter.resize_tensor_input(self.input.index, [size, *self.input.shape[1:]])
            interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            raise ModelError(f"{self.model_path}: cannot resize the input to a batch of {size} "
                             f"({interpreter_reason(error)})") from error
        self.batch_size = size
        self._batch_input = np.zeros((size, *self.input.shape[1:]), dtype=self.input.dtype)
        return size

    def scores_batch(self, pixels: np.ndarray) -> np.ndarray:
        """Class scores (n, classes), float32 and dequantized, of n <= batch_size uint8 images in one invoke.

        A batch shorter than `batch_size` fills the front of the input; the rest is left as it
        was and its scores are not returned, so the input is never resized again. ModelError when
        the interpreter fails to run the model, as in `scores`.
        """
        count = len(pixels)
        if self._batch_input is None:
            return np.stack([self.scores(image) for image in pixels]) if count else np.empty((0, self.num_classes))
        if count > self.batch_size:
            raise ValueError(f"{count} images for a batch of {self.batch_size}")
        batch = self._batch_input
        batch[:count] = self._quantize(pixels)
        interpreter = self._interpreter
        try:
            interpreter.set_tensor(self.input.index, batch)
            interpreter.invoke()
        except (RuntimeError, ValueError) as error:
            raise cannot_run(self.model_path, self.backend, error) from error
        raw = interpreter.get_tensor(self.output.index)[:count]
        scores = self._score_table.take(raw.view(np.uint8)) if self._score_table is not None else raw
        if self._calibrate is not None:
            scores = np.stack([self._calibrate(row) for row in scores])
        return scores

    def classify(self, pixels: np.ndarray, top_k: int = 1, threshold: float = 0.0) -> list[Class]:
        """The best classes of one preprocessed uint8 image."""
        return top_classes(self.scores(pixels), self.labels, top_k, threshold)

    def load(self, path: str | os.PathLike) -> np.ndarray:
        """Read an image file through the model's own preprocessing."""
        return load_image(path, self.spec)

    def describe(self) -> dict[str, Any]:
        """Facts about the model for `--info` and the report."""
        def tensor(info: TensorInfo) -> dict[str, Any]:
            data: dict[str, Any] = {"shape": list(info.shape), "dtype": info.dtype.name}
            if info.quantized:
                data["quantization"] = {"scale": info.scale, "zero_point": info.zero_point}
            return data

        return {
            "model": str(self.model_path),
            "backend": self.backend,
            "threads": self.threads,
            "input": tensor(self.input),
            "output": tensor(self.output),
            "quantized": self.input.quantized or self.output.quantized,
            "num_classes": self.num_classes,
            "labels": self.labels,
            "labels_source": self.labels_source,
            "preprocess": self.spec.to_dict(),
            "normalization": {"rule": self.input_rule.describe(self.input.dtype), "source": self.input_rule.source,
                              "guessed": self.input_rule.guessed},
            "tflite_metadata": self.official.summary() if self.official else None,
        }


# TFLite's error reporter ends a failing node's messages with "Node number 4 (RESHAPE) failed to invoke."
FAILED_NODE = re.compile(r"Node number (\d+) \(([^)]*)\) failed to \w+\.?")
# A kernel's failed check starts with its source file: "tensorflow/lite/kernels/reshape.cc:94 ".
SOURCE_LOCATION = re.compile(r"^\S*\.(?:h|cc|c|cpp)(?::\d+)?\s+")
# How each XNNPACK delegate message ends; ai_edge_litert joins messages with no separator at all.
XNNPACK_MESSAGE_END = "in XNNPACK delegate"


def interpreter_reason(error: BaseException) -> str:
    """The latest failure in a TFLite interpreter error, in one readable line.

    The interpreter joins its messages (without a separator in ai_edge_litert, by newlines in older
    builds), keeps those of earlier calls in front, and leads each kernel check with its source file:
    "./tflite/kernels/internal/reshape_utils.h num_input_elements != num_output_elements (36 != 37)Node
    number 4 (RESHAPE) failed to invoke." becomes "num_input_elements != num_output_elements (36 != 37)
    at node 4 (RESHAPE)". A failing node that repeats without its reason (the XNNPACK delegate says
    why only the first time) keeps the reason given before.
    """
    text = str(error).strip()
    nodes = list(FAILED_NODE.finditer(text))
    if not nodes:
        return _first_message(text) or type(error).__name__
    starts = [0] + [node.end() for node in nodes[:-1]]
    for start, node in zip(reversed(starts), reversed(nodes)):
        reason = _first_message(text[start:node.start()])
        if reason:
            return f"{reason} at node {node.group(1)} ({node.group(2)})"
    return nodes[-1].group(0).rstrip(".")


def _first_message(text: str) -> str:
    """The first of the messages joined in `text`, without the source file that leads it."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    reason = SOURCE_LOCATION.sub("", lines[0]) if lines else ""
    end = reason.find(XNNPACK_MESSAGE_END)
    return reason[:end + len(XNNPACK_MESSAGE_END)] if end >= 0 else reason


def cannot_run(model_path: str | os.PathLike, backend: str, error: BaseException) -> ModelError:
    """The ModelError for a model that loaded but whose interpreter failed to run it (one line)."""
    return ModelError(f"{model_path}: the {backend} interpreter cannot run this model ({interpreter_reason(error)})")
