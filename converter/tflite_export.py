"""One TFLite variant from the Keras model: the SavedModel export of its inference graph, the
TFLite converter's settings for each variant (int8 and uint8 fed the calibration images one at a
time), and the check that a full-integer file really has int8 (or uint8) input and output tensors.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Iterator

import numpy as np

from converter.variants import DYNAMIC, FLOAT16, FLOAT32, FULL_INTEGER, INT8
from edge_runtime.errors import DataError, ModelError
from edge_runtime.interpreter import load_interpreter_class
from trainer.tensorflow_env import import_tensorflow, native_output_to_log


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
