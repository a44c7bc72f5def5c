"""Which model file `edge-classify` uses when the user does not say.

In order: the `--model` option, the `EDGE_CLASSIFY_MODEL` environment variable, else the only
`.tflite` file in the current folder, or, where the folder holds only what edge-convert writes
(`model_<variant>.tflite`), its int8 model. Anything else is an error that says where it looked.
"""

from __future__ import annotations

import os
import re
from typing import Mapping, NamedTuple

from ..errors import ModelError

MODEL_ENV_VAR = "EDGE_CLASSIFY_MODEL"
MODEL_SUFFIX = ".tflite"
# edge-convert names its files model_<variant>.tflite; int8 is the one made for devices.
CONVERTER_FILE = re.compile(r"model_[a-z0-9]+\.tflite")
PREFERRED_CONVERTER_FILE = "model_int8.tflite"


class ModelChoice(NamedTuple):
    """The model path to use, and why it was chosen over others when there were several (else None)."""

    path: str
    reason: str | None = None


def find_model(option: str | os.PathLike | None, environ: Mapping[str, str] | None = None,
               folder: str | os.PathLike | None = None) -> str:
    """The model path to use; ModelError saying where it looked when there is none (or several).

    The returned path is not checked here: `interpreter.check_model_file` says what is wrong with it.
    """
    return choose_model(option, environ, folder).path


def choose_model(option: str | os.PathLike | None, environ: Mapping[str, str] | None = None,
                 folder: str | os.PathLike | None = None) -> ModelChoice:
    """As `find_model`, with the reason when the int8 model was picked among edge-convert's files."""
    if option is not None:
        return ModelChoice(os.fspath(option))
    environ = os.environ if environ is None else environ
    from_env = environ.get(MODEL_ENV_VAR, "").strip()
    if from_env:
        return ModelChoice(from_env)
    folder = os.getcwd() if folder is None else os.fspath(folder)
    try:
        candidates = sorted(entry.name for entry in os.scandir(folder)
                            if entry.name.lower().endswith(MODEL_SUFFIX) and entry.is_file())
    except OSError as error:
        raise ModelError(f"no model given (--model, ${MODEL_ENV_VAR}) and the current folder "
                         f"{folder} cannot be listed ({error.strerror})") from error
    if len(candidates) == 1:
        return ModelChoice(os.path.join(folder, candidates[0]))
    if PREFERRED_CONVERTER_FILE in candidates and all(CONVERTER_FILE.fullmatch(name) for name in candidates):
        others = ", ".join(name for name in candidates if name != PREFERRED_CONVERTER_FILE)
        return ModelChoice(os.path.join(folder, PREFERRED_CONVERTER_FILE),
                           f"{PREFERRED_CONVERTER_FILE} chosen over {others} in {folder} (int8 is the one made "
                           f"for devices; --model or ${MODEL_ENV_VAR} chooses another)")
    if not candidates:
        raise ModelError(f"no model given: looked for --model, ${MODEL_ENV_VAR} and a {MODEL_SUFFIX} "
                         f"file in {folder} (none there)")
    raise ModelError(f"no model given and {folder} holds {len(candidates)} {MODEL_SUFFIX} files "
                     f"({', '.join(candidates)}); choose one with --model or ${MODEL_ENV_VAR}")
