"""How the person started us, so that messages name the knobs they have.

`make train` / `make convert` / `make report` run the commands with `EDGE_TOOLKIT_MAKE=1` in the
environment (the Makefile's recipe lines). There the person sets `FORCE=1`, `OUT=...` and `DATA=...`,
not `--force`, `--out` and `--data`; `knob` turns an option into what to tell them. Nothing here
changes the environment: it is only read when a message is written.
"""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

MAKE_ENV = "EDGE_TOOLKIT_MAKE"  # set (non-empty) by the Makefile's train, convert and report recipes
# The Makefile's variable for each option it passes on (see its train, convert and report recipes).
MAKE_VARIABLES = {"--data": "DATA", "--out": "OUT", "--force": "FORCE", "--arch": "ARCH", "--epochs": "EPOCHS",
                  "--seed": "SEED", "--keep": "KEEP", "--calibration-size": "CALIBRATION", "--max-drop": "MAX_DROP"}
MAKE_FLAG_VALUE = "1"  # what turns a flag variable on: FORCE=1
TRAIN_PROGRAM = "edge-train"


def under_make() -> bool:
    """Whether the Makefile started this command."""
    return bool(os.environ.get(MAKE_ENV))


def knob(option: str, value: str | None = None) -> str:
    """What the person writes to set `option` (to `value`; a flag without one): `FORCE=1`, `OUT=FOLDER`
    under make, `--force`, `--out FOLDER` otherwise. An option make has no variable for is named as
    edge-train's, with a word that make cannot pass it."""
    if under_make():
        variable = MAKE_VARIABLES.get(option)
        if variable is not None:
            return f"{variable}={MAKE_FLAG_VALUE if value is None else value}"
        spelled = option if value is None else f"{option} {value}"
        return f"{TRAIN_PROGRAM} {spelled} (make has no variable for it)"
    return option if value is None else f"{option} {value}"


def train_program() -> str:
    """How to run edge-train: under make, the one beside the Python running (e.g. `.venv/bin/edge-train`,
    which need not be on PATH), else plain `edge-train`."""
    if not under_make():
        return TRAIN_PROGRAM
    beside = Path(sys.executable).parent / TRAIN_PROGRAM
    if not beside.is_file():
        return TRAIN_PROGRAM
    try:
        return shlex.quote(str(beside.relative_to(Path.cwd())))
    except ValueError:  # outside the current folder: the full path
        return shlex.quote(str(beside))


def resume_command(out: str | os.PathLike) -> str:
    """The command line that continues the run in `out` (make has no resume: edge-train's, under make too)."""
    return f"{train_program()} --resume --out {shlex.quote(str(out))}"
