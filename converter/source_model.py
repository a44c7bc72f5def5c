"""The Keras model to convert: the file checked before TensorFlow loads, the model loaded, its shape
(one image in, one vector of class scores out), its labels and the preprocessing it was trained with.

Every refusal is a ModelError (or DataError) of one line naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from pathlib import Path
from typing import Any

from converter.artifacts import TRAINING_INFO_NAME, train_first_hint
from converter.data import read_training_info
from edge_runtime.errors import DataError, ModelError
from edge_runtime.model_file.labels import read_labels
from edge_runtime.preprocess import DEFAULT_SPEC, PreprocessSpec
from trainer.tensorflow_env import import_tensorflow, native_output_to_log

KERAS_SUFFIXES = (".keras",)
IMAGE_INPUT_RANK = 4  # (batch, height, width, channels)
CLASS_OUTPUT_RANK = 2  # (batch, classes)
RGB_CHANNELS = 3


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
