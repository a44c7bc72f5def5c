"""The TFLite variants edge-convert can write, by name, and what each one is.

float32 and the full-integer int8 are the defaults; uint8 is int8 with uint8 input and output
tensors (for tools that take no int8 tensors), dynamic and float16 quantize the weights only.
The full-integer variants are the ones that need calibration images.
"""

from __future__ import annotations

from typing import Iterable

FLOAT32 = "float32"
INT8 = "int8"
UINT8 = "uint8"  # full-integer like int8, with uint8 input and output for tools that take no int8 tensors
DYNAMIC = "dynamic"  # int8 weights, float activations and float input/output
FLOAT16 = "float16"  # float16 weights, float32 input/output
VARIANTS = (FLOAT32, INT8, UINT8, DYNAMIC, FLOAT16)
FULL_INTEGER = (INT8, UINT8)  # calibrated, with quantized input and output tensors
DEFAULT_VARIANTS = (FLOAT32, INT8)
# What each variant's info says about its tensors, for people reading model_info.json.
VARIANT_DESCRIPTIONS = {
    FLOAT32: "float32 weights and activations",
    INT8: "full-integer post-training quantization: int8 weights, activations, input and output",
    UINT8: "full-integer post-training quantization: int8 weights and activations, uint8 input and output",
    DYNAMIC: "dynamic-range quantization: int8 weights, float32 activations, input and output",
    FLOAT16: "float16 weights, float32 activations, input and output",
}


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


def needs_calibration(variants: Iterable[str]) -> bool:
    """True when a full-integer variant (int8, uint8) is asked for: those need calibration images."""
    return any(variant in FULL_INTEGER for variant in variants)
