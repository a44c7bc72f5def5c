"""The x86 side: edge-classify's answers on this machine for every model, one set for each backend the
arm64 installs use (the project's .venv has ai-edge-litert; tflite-runtime gets an x86 environment of
its own in the cache)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Sequence

from .answers import COMMAND_TIMEOUT_S, ModelAnswers, collect_answers
from .errors import CheckFailed, RunError, Unavailable
from .host import run_host
from .install import INSTALL_BACKENDS, INSTALL_TIMEOUT_S, INSTALLS, Install


def host_runner(program: Path, work: Path) -> Any:
    def run(args: list[str]) -> subprocess.CompletedProcess:
        return subprocess.run([str(program), *args], cwd=work, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
    return run


def host_reference_venv(cache: Path, wheel: Path, install: Install) -> Path:
    """An x86 virtual environment with the same extra, for comparing an install path whose interpreter
    package the project's .venv lacks (tflite-runtime)."""
    venv = cache / f"x86-venv-{install.name}"
    stamp = venv / ".arm64-check-wheel"
    key = f"{wheel.name} {wheel.stat().st_size} {wheel.stat().st_mtime_ns}"
    if stamp.is_file() and stamp.read_text(encoding="utf-8") == key:
        return venv / "bin" / "edge-classify"
    shutil.rmtree(venv, ignore_errors=True)
    python = shutil.which("python3.11") or sys.executable
    run_host([python, "-m", "venv", str(venv)], f"creating the x86 {install.name} reference environment")
    try:
        run_host([str(venv / "bin" / "pip"), "install", "--quiet", f"{wheel}[{install.extra}]"],
                 f"installing {wheel.name}[{install.extra}] on x86", timeout=INSTALL_TIMEOUT_S)
    except Unavailable as error:
        raise RunError(str(error)) from error
    stamp.write_text(key, encoding="utf-8")
    return venv / "bin" / "edge-classify"


def x86_references(models: list[Path], work: Path, cache: Path, wheel: Path, host_edge_classify: Path,
                   distros: Sequence[str]) -> tuple[dict[str, dict[str, ModelAnswers]], list[str]]:
    """x86's answers for every model, by backend, run from `work`; a backend without an x86 environment is a
    note. CheckFailed when edge-classify fails on x86 already."""
    references: dict[str, dict[str, ModelAnswers]] = {}
    notes: list[str] = []
    wanted_backends = {INSTALL_BACKENDS[i.name] for i in INSTALLS if set(i.distros) & set(distros)}
    for backend in sorted(wanted_backends):
        try:
            if backend == "ai_edge_litert":
                edge_classify = host_edge_classify
            else:
                install = next(i for i in INSTALLS if INSTALL_BACKENDS[i.name] == backend)
                edge_classify = host_reference_venv(cache, wheel, install)
        except RunError as error:
            notes.append(f"x86 reference for {backend} not available: {error}")
            continue
        run = host_runner(edge_classify, work)
        python = host_runner(edge_classify.parent / "python", work)
        references[backend] = {}
        for model in models:
            first = run(["--info", f"models/{model.name}", "--json"])
            classes = json.loads(first.stdout).get("num_classes", 1) if first.returncode == 0 else 1
            answers = collect_answers(run, f"models/{model.name}", classes, "x86", python)
            if answers.problems:
                raise CheckFailed(f"edge-classify fails on x86 already: {answers.problems[0]}")
            references[backend][model.name] = answers
    return references, notes
