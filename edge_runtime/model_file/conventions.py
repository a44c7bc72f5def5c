"""Which preprocessing and labels a model gets: what its file says, else what its ecosystem assumes.

Our own models (the `preprocess.json` edge-convert embeds) get exactly their training
preprocessing. Any other model gets what MediaPipe's ImageClassifier, the ecosystem's reference
runtime (its Android and web demos included), feeds it: the same pixels and the same input values,
so a user comparing the two sees the same scores, and a threshold tuned in one holds in the other.

Input values, in this order:
1. our own embedded specification;
2. a quantized input: the pixel itself (uint8) or pixel - 128 (int8), whether or not the official
   TFLite metadata has NormalizationOptions. MediaPipe feeds a uint8 input the pixel itself and
   leaves the metadata's normalization to the tensor's scale and zero point, which stand for it;
   it takes no int8 input, which gets the same codes shifted, as pycoral and the TFLite examples
   feed it;
3. a float input with the metadata's NormalizationOptions: (pixel - mean) / std, computed as
   MediaPipe computes it (`Normalization.apply_as_range`; MediaPipe refuses a mean and std that
   differ per channel, which are applied per channel here);
4. a float input without: pixel / 255, a guess the user is told about (MediaPipe refuses it).
`--normalization MEAN,STD` overrides all four: (pixel - mean) / std, then a quantized input's own
scale and zero point.

Resizing: ours as embedded; any other model's whole image to the input size, no crop, by
`fixed_point_resize.fixed_point_bilinear`, MediaPipe's resize to the pixel. Labels: ours, else the
official metadata's label file, else `--labels`, else class indices.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from ..preprocess import FIXED_POINT_BILINEAR, PIXEL_SCALE, Normalization, PreprocessSpec
from .labels import read_labels

if TYPE_CHECKING:  # for annotations only: the metadata readers load when a model has what they read
    from .metadata import ModelMetadata
    from .official_metadata import OfficialMetadata

EMBEDDED = "embedded"  # our preprocess.json / labels.txt
TFLITE_METADATA = "tflite_metadata"  # the official metadata's NormalizationOptions (float inputs use them)
QUANTIZED_PIXELS = "quantized_pixels"  # no metadata, quantized input: the pixel as it is
GUESSED_UNIT_RANGE = "guessed_unit_range"  # no metadata, float input: pixel / 255
OPTION = "option"  # the user's --normalization, over anything the file says
NORMALIZED_KINDS = (TFLITE_METADATA, OPTION)  # the rules that are a (pixel - mean) / std
# The rules under which a quantized input takes the pixel codes themselves, as MediaPipe feeds them.
PIXEL_CODE_KINDS = (TFLITE_METADATA, QUANTIZED_PIXELS)
QUANTIZED_INPUTS = (np.dtype(np.uint8), np.dtype(np.int8))
# How a model from elsewhere is resized: the whole image to the input size, as MediaPipe does.
FOREIGN_RESIZE = "stretch"
FOREIGN_RESAMPLE = FIXED_POINT_BILINEAR
INDICES = "class indices"


class InputRule(NamedTuple):
    """How uint8 pixels become the model's input values, and where that rule came from."""

    kind: str
    spec: PreprocessSpec  # image size, crop and resampling (and, for EMBEDDED, the scaling)
    normalization: Normalization | None = None  # for TFLITE_METADATA and OPTION
    source: str = ""  # for people: where the rule came from

    @property
    def guessed(self) -> bool:
        return self.kind == GUESSED_UNIT_RANGE

    def feeds_pixel_codes(self, dtype: np.dtype) -> bool:
        """Whether an input of `dtype` takes the pixel itself (uint8) or pixel - 128 (int8)."""
        return self.kind in PIXEL_CODE_KINDS and np.dtype(dtype) in QUANTIZED_INPUTS

    def normalize(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels to float32 (pixel - mean) / std; the metadata's rule computed as MediaPipe does."""
        if self.normalization is None:
            raise ValueError(f"the {self.kind} input rule has no normalization")
        if self.kind == TFLITE_METADATA:
            return self.normalization.apply_as_range(pixels)
        return self.normalization.apply(pixels)

    def describe(self, dtype: np.dtype) -> str:
        """The rule as a formula, e.g. '(pixel - 127.5) / 127.5, then the input's scale and zero point'."""
        quantized = np.dtype(dtype) != np.float32
        if self.feeds_pixel_codes(dtype):
            return "the pixel itself" if np.dtype(dtype) == np.uint8 else "pixel - 128"
        if self.kind in NORMALIZED_KINDS and self.normalization is not None:
            formula = self.normalization.describe()
        elif self.kind == GUESSED_UNIT_RANGE or (self.spec.scale == 1.0 / PIXEL_SCALE and self.spec.offset == 0.0):
            formula = f"pixel / {PIXEL_SCALE:g}"
        else:
            formula = f"pixel * {self.spec.scale:.6g} + {self.spec.offset:g}"
        return formula + (", then the input's scale and zero point" if quantized else "")


def resolve_input(embedded: ModelMetadata | None, official: OfficialMetadata | None, dtype: np.dtype,
                  height: int, width: int, override: Normalization | None = None) -> InputRule:
    """The input rule for a model with input tensor `dtype` of `height` x `width` (see the module).

    `override` (the user's --normalization) replaces whatever normalization the file says or the
    conventions assume; the image size, crop and resampling still come from the file.
    """
    foreign = PreprocessSpec(height=height, width=width, resize=FOREIGN_RESIZE, resample=FOREIGN_RESAMPLE)
    if override is not None:
        return InputRule(OPTION, embedded.preprocess if embedded is not None else foreign, override,
                         source="--normalization")
    if embedded is not None:
        return InputRule(EMBEDDED, embedded.preprocess, source="embedded preprocess.json")
    if official is not None and official.normalization is not None:
        source = "TFLite metadata NormalizationOptions"
        if np.dtype(dtype) in QUANTIZED_INPUTS:
            convention = ("MediaPipe's rule for uint8 inputs" if np.dtype(dtype) == np.uint8
                          else "the TFLite convention for int8 inputs")
            source = (f"{convention}; the TFLite metadata's {official.normalization.describe()} "
                      "is what the input's scale and zero point stand for")
        return InputRule(TFLITE_METADATA, foreign, official.normalization, source=source)
    if np.dtype(dtype) in QUANTIZED_INPUTS:
        return InputRule(QUANTIZED_PIXELS, foreign,
                         source=f"no normalization metadata: the TFLite convention for {np.dtype(dtype).name} inputs")
    return InputRule(GUESSED_UNIT_RANGE, foreign, source="no normalization metadata: guessed")


class LabelChoice(NamedTuple):
    """The labels a model's classes are shown with, and where they came from."""

    labels: list[str] | None
    source: str  # "embedded", "TFLite metadata, <file>", the --labels path, or "class indices"
    from_model: bool  # the model carries them (so --labels is not used)


def resolve_labels(embedded: ModelMetadata | None, official: OfficialMetadata | None,
                   labels_path: str | os.PathLike | None) -> LabelChoice:
    """Ours, else the official metadata's label file, else `labels_path`, else class indices."""
    if embedded is not None and embedded.labels:
        return LabelChoice(embedded.labels, EMBEDDED, True)
    if official is not None and official.labels:
        return LabelChoice(official.labels, f"TFLite metadata, {official.labels_file}", True)
    if labels_path is not None:
        return LabelChoice(read_labels(labels_path), str(labels_path), False)
    return LabelChoice(None, INDICES, False)
