"""Which preprocessing and labels a model gets: what its file says, else what its ecosystem assumes.

Input values, in this order:
1. our own embedded specification (`preprocess.json`, written by edge-convert);
2. the official TFLite metadata's NormalizationOptions: real = (pixel - mean) / std, then the
   input tensor's own scale and zero point;
3. a quantized input without either: the pixel itself (uint8) or pixel - 128 (int8), which is what
   such a tensor's scale and zero point encode in the TFLite ecosystem (pycoral's
   `classify_image.py` and the TFLite examples feed pixels so);
4. a float input without either: pixel / 255, a guess the user is told about.
`--normalization MEAN,STD` overrides all four.

Resizing: ours as embedded; any other model's whole image is resized to the input size (no crop,
bilinear), as pycoral and the TFLite examples do. Labels: ours, else the official metadata's
label file, else `--labels`, else class indices.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from .labels import read_labels
from .metadata import ModelMetadata
from .official_metadata import OfficialMetadata
from .preprocess import PIXEL_SCALE, Normalization, PreprocessSpec

EMBEDDED = "embedded"  # our preprocess.json / labels.txt
TFLITE_METADATA = "tflite_metadata"  # the official metadata's NormalizationOptions
QUANTIZED_PIXELS = "quantized_pixels"  # no metadata, quantized input: the pixel as it is
GUESSED_UNIT_RANGE = "guessed_unit_range"  # no metadata, float input: pixel / 255
OPTION = "option"  # the user's --normalization, over anything the file says
NORMALIZED_KINDS = (TFLITE_METADATA, OPTION)  # the rules that are a (pixel - mean) / std
# How a model from elsewhere is resized: the whole image to the input size, as its ecosystem does.
FOREIGN_RESIZE = "stretch"
FOREIGN_RESAMPLE = "bilinear"
INDICES = "class indices"


@dataclasses.dataclass(frozen=True)
class InputRule:
    """How uint8 pixels become the model's input values, and where that rule came from."""

    kind: str
    spec: PreprocessSpec  # image size, crop and resampling (and, for EMBEDDED, the scaling)
    normalization: Normalization | None = None  # for TFLITE_METADATA
    source: str = ""  # for people: where the rule came from

    @property
    def guessed(self) -> bool:
        return self.kind == GUESSED_UNIT_RANGE

    def describe(self, dtype: np.dtype) -> str:
        """The rule as a formula, e.g. '(pixel - 127.5) / 127.5, then the input's scale and zero point'."""
        quantized = np.dtype(dtype) != np.float32
        if self.kind == QUANTIZED_PIXELS:
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
        return InputRule(TFLITE_METADATA, foreign, official.normalization,
                         source="TFLite metadata NormalizationOptions")
    if np.dtype(dtype) in (np.uint8, np.int8):
        return InputRule(QUANTIZED_PIXELS, foreign,
                         source=f"no normalization metadata: the TFLite convention for {np.dtype(dtype).name} inputs")
    return InputRule(GUESSED_UNIT_RANGE, foreign, source="no normalization metadata: guessed")


@dataclasses.dataclass(frozen=True)
class LabelChoice:
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
