"""The files of a training folder the converter reads and writes, and the hints that name the
command which writes a missing one.

`model.keras`, `labels.txt` and `training.json` come from edge-train; `model_<variant>.tflite`
from edge-convert. A hint names `make` when the folder is the Makefile's, else the console script.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

MODEL_FILE_TEMPLATE = "model_{variant}.tflite"
KERAS_MODEL_NAME = "model.keras"
LABELS_NAME = "labels.txt"
TRAINING_INFO_NAME = "training.json"
MAKE_DEFAULT_OUT = Path("artifacts")  # the Makefile's OUT, named in the hints only when it differs


def model_file_name(variant: str) -> str:
    """`model_<variant>.tflite`, the file name of a variant."""
    return MODEL_FILE_TEMPLATE.format(variant=variant)


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
