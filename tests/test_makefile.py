"""`make` alone lists every target and every variable with its default and meaning; train passes ARCH, EPOCHS,
KEEP and FORCE."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
MAKEFILE = REPO_ROOT / "Makefile"
VARIABLE = re.compile(r"^([A-Z_]+) \?=(.*)$")
# The variables the README promises `make` describes; the parse below must find at least these.
DOCUMENTED = {"ARCH", "DATA", "OUT", "EPOCHS", "SEED", "KEEP", "FORCE", "CALIBRATION", "MAX_DROP", "PYTEST_ARGS",
              "DEVICE", "MODEL", "DEST", "PYTHON", "VENV"}

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def makefile_variables() -> dict[str, str]:
    """Each `NAME ?= default` of the Makefile, default as written."""
    found = {}
    for line in MAKEFILE.read_text(encoding="utf-8").splitlines():
        match = VARIABLE.match(line)
        if match:
            found[match.group(1)] = match.group(2).strip()
    return found


def make(*args: str) -> str:
    """`make -s ARGS` in the repository, free of overrides from the environment or an enclosing `make test`."""
    inherited = set(makefile_variables()) | {"MAKEFLAGS", "MFLAGS", "MAKELEVEL"}
    env = {key: value for key, value in os.environ.items() if key not in inherited}
    completed = subprocess.run(["make", "-s", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                               env=env)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout


def test_every_variable_has_no_trailing_comment() -> None:
    """A comment after a value would leave its spaces in the value ("artifacts   /model.keras")."""
    for line in MAKEFILE.read_text(encoding="utf-8").splitlines():
        if VARIABLE.match(line):
            assert "#" not in line and line == line.rstrip(), line


@pytest.mark.parametrize("goal", [[], ["help"]], ids=["make", "make help"])
def test_help_lists_every_variable_with_its_default_and_meaning(goal: list[str]) -> None:
    variables = makefile_variables()
    assert DOCUMENTED <= set(variables)
    lines = make(*goal).splitlines()
    for name, default in variables.items():
        listed = [line for line in lines if line.strip().startswith(f"{name}=")]
        assert len(listed) == 1, f"{name} is not listed once"
        match = re.fullmatch(rf"  {re.escape(name)}=(\S*) +(\S.*)", listed[0])
        assert match, listed[0]
        assert match.group(1) == default
        assert len(match.group(2)) > 10, f"{name} has no meaning: {listed[0]!r}"


def test_help_lists_every_target() -> None:
    text = make("help")
    targets = re.findall(r"^([a-z]+):.*## ", MAKEFILE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert {"train", "convert", "report", "test", "deploy"} <= set(targets)
    for target in targets:
        assert re.search(rf"^  {target} +\S", text, flags=re.MULTILINE), target


def train_command(*assignments: str) -> str:
    """The edge-train command `make train` would run (make -n prints without running anything)."""
    lines = [line for line in make("-n", "train", *assignments).splitlines() if "-m trainer.cli" in line]
    assert len(lines) == 1
    return lines[0]


def test_train_passes_keep_and_force() -> None:
    # No --epochs by default: the network's own (15 for the documented cnn).
    assert train_command().split("-m trainer.cli ")[1].split() == [
        '--arch', '"cnn"', '--out', '"artifacts"', '--seed', '0', '--keep', '"best"']
    command = train_command("KEEP=last", "FORCE=1", "OUT=elsewhere")
    assert '--out "elsewhere"' in command and '--keep "last" --force' in command


def test_train_passes_arch_and_epochs() -> None:
    command = train_command("ARCH=resnet8", "EPOCHS=3")
    assert '--arch "resnet8"' in command and "--epochs 3 " in command


def test_train_convert_and_report_tell_the_programs_they_run_under_make() -> None:
    from trainer.invocation import MAKE_ENV

    for target, module in (("train", "-m trainer.cli"), ("convert", "-m converter.cli --model"),
                           ("report", "-m converter.cli report")):
        lines = [line for line in make("-n", target).splitlines() if module in line]
        assert len(lines) == 1 and lines[0].startswith(f"{MAKE_ENV}=1 "), (target, lines)


def test_make_train_refusal_names_force_and_out_not_options(tmp_path: Path) -> None:
    """Through the real Makefile and edge-train: a stand-in venv whose python is this one, and an OUT that
    holds a finished run, which the trainer refuses before it loads data or TensorFlow."""
    import sys

    from trainer.invocation import MAKE_ENV

    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n', encoding="utf-8")
    python.chmod(0o755)
    (venv / ".installed").touch()  # newer than pyproject.toml: make installs nothing
    out = tmp_path / "run"
    out.mkdir()
    for name in ("model.keras", "training.json"):
        (out / name).write_text("stand-in\n", encoding="utf-8")
    inherited = set(makefile_variables()) | {"MAKEFLAGS", "MFLAGS", "MAKELEVEL", MAKE_ENV}
    env = {key: value for key, value in os.environ.items() if key not in inherited}
    completed = subprocess.run(["make", "-s", "train", f"VENV={venv}", f"OUT={out}"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=120, env=env)
    assert completed.returncode != 0
    assert (f"Error: {out}: already holds a finished run (model.keras, training.json); it is complete: replace it "
            f"with FORCE=1, or train into another folder with OUT=FOLDER\n") in completed.stderr
    assert "--force" not in completed.stderr and "--out" not in completed.stderr
