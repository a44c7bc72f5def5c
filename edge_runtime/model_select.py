"""Which model file `edge-classify` uses when the user does not say.

In order: the `--model` option, the `EDGE_CLASSIFY_MODEL` environment variable, else the only
`.tflite` file in the current folder. Anything else is an error that says where it looked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from .errors import ModelError

MODEL_ENV_VAR = "EDGE_CLASSIFY_MODEL"
MODEL_SUFFIX = ".tflite"


def find_model(option: str | os.PathLike | None, environ: Mapping[str, str] | None = None,
               folder: str | os.PathLike | None = None) -> Path:
    """The model path to use; ModelError saying where it looked when there is none (or several).

    The returned path is not checked here: `interpreter.check_model_file` says what is wrong with it.
    """
    if option is not None:
        return Path(option)
    environ = os.environ if environ is None else environ
    from_env = environ.get(MODEL_ENV_VAR, "").strip()
    if from_env:
        return Path(from_env)
    folder = Path.cwd() if folder is None else Path(folder)
    try:
        candidates = sorted(entry.name for entry in os.scandir(folder)
                            if entry.name.lower().endswith(MODEL_SUFFIX) and entry.is_file())
    except OSError as error:
        raise ModelError(f"no model given (--model, ${MODEL_ENV_VAR}) and the current folder "
                         f"{folder} cannot be listed ({error.strerror})") from error
    if len(candidates) == 1:
        return folder / candidates[0]
    if not candidates:
        raise ModelError(f"no model given: looked for --model, ${MODEL_ENV_VAR} and a {MODEL_SUFFIX} "
                         f"file in {folder} (none there)")
    raise ModelError(f"no model given and {folder} holds {len(candidates)} {MODEL_SUFFIX} files "
                     f"({', '.join(candidates)}); choose one with --model or ${MODEL_ENV_VAR}")
