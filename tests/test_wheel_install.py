"""The runtime-only install: build the wheel, install it with only the `edge` extra into a fresh
virtual environment, and classify an image there without TensorFlow.

Installing needs the package registry (numpy, pillow, click, ai-edge-litert; pip may reuse its
cache); where the registry cannot be reached the test skips with pip's reason.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from edge_runtime.classify import Classifier
from synthetic import CLASS_NAMES

pytest_plugins = ("runtime_fixtures",)

REPO_ROOT = Path(__file__).resolve().parent.parent
DIST_NAME = "edge-image-toolkit"
# What the edge extra must bring, and what must never come with it.
EDGE_REQUIREMENTS = {"numpy", "pillow", "click", "flatbuffers", "ai-edge-litert", DIST_NAME}
FORBIDDEN_PREFIXES = ("tensorflow", "tf-nightly", "keras", "tf-keras")
# Paths of the checkout that are not part of the source distribution (outputs, environments).
NOT_SOURCES = (".git", ".venv", "artifacts", "build", "dist", "bench-out", "ci-artifacts", ".pytest_cache",
               "__pycache__", "*.egg-info", "tests", "benchmarks")
BUILD_TIMEOUT_S = 300
INSTALL_TIMEOUT_S = 600
RUN_TIMEOUT_S = 120
# pip's words for "the registry cannot be reached" (as opposed to a real dependency problem).
OFFLINE_SIGNS = ("NewConnectionError", "Failed to establish a new connection", "Temporary failure in name resolution",
                 "Name or service not known", "Network is unreachable", "ProxyError", "ConnectTimeoutError",
                 "Read timed out")

pytestmark = pytest.mark.slow


def _clean_env() -> dict[str, str]:
    """The environment without anything that would let the fresh venv see this checkout or .venv."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_NO_INPUT"] = "1"
    return env


def _run(argv: list[str], timeout: float, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=_clean_env())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built from a copy of the checkout so no build/ or *.egg-info lands in it."""
    source = tmp_path_factory.mktemp("source") / "edge-image-toolkit"
    shutil.copytree(REPO_ROOT, source, ignore=shutil.ignore_patterns(*NOT_SOURCES))
    out = tmp_path_factory.mktemp("wheelhouse")
    result = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(out), str(source)],
                  BUILD_TIMEOUT_S, cwd=out)
    if result.returncode != 0 and any(sign in result.stdout + result.stderr for sign in OFFLINE_SIGNS):
        pytest.skip(f"cannot fetch the build backend from the package registry: {result.stderr.strip()[-300:]}")
    assert result.returncode == 0, result.stdout + result.stderr
    wheels = list(out.glob("*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.fixture(scope="module")
def edge_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment (no system site packages) with `wheel[edge]` installed."""
    venv = tmp_path_factory.mktemp("venv") / "edge-venv"
    created = _run([sys.executable, "-m", "venv", str(venv)], RUN_TIMEOUT_S, cwd=venv.parent)
    assert created.returncode == 0, created.stderr
    python = venv / "bin" / "python"
    installed = _run([str(python), "-m", "pip", "install", f"{wheel}[edge]"], INSTALL_TIMEOUT_S, cwd=venv.parent)
    if installed.returncode != 0 and any(sign in installed.stdout + installed.stderr for sign in OFFLINE_SIGNS):
        pytest.skip(f"the package registry is unreachable: {installed.stderr.strip().splitlines()[-1]}")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return venv


def test_edge_extra_installs_the_runtime_and_no_tensorflow(edge_venv: Path):
    config = (edge_venv / "pyvenv.cfg").read_text()
    assert "include-system-site-packages = false" in config
    listed = _run([str(edge_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"], RUN_TIMEOUT_S,
                  cwd=edge_venv)
    assert listed.returncode == 0, listed.stderr
    names = {entry["name"].lower().replace("_", "-") for entry in json.loads(listed.stdout)}
    assert EDGE_REQUIREMENTS <= names, EDGE_REQUIREMENTS - names
    assert [name for name in names if name.startswith(FORBIDDEN_PREFIXES)] == []
    imported = _run([str(edge_venv / "bin" / "python"), "-c", "import tensorflow"], RUN_TIMEOUT_S, cwd=edge_venv)
    assert imported.returncode != 0
    assert "No module named 'tensorflow'" in imported.stderr


def test_installed_edge_classify_classifies_an_image(edge_venv: Path, runtime_models, synthetic_test_images,
                                                     tmp_path: Path):
    # Pick a fresh synthetic image this checkout's runtime classifies correctly; the installed
    # command must print the same label.
    classifier = Classifier(runtime_models.int8)
    images, classes = synthetic_test_images
    index = next(i for i, image in enumerate(images)
                 if classifier.classify(image)[0].index == classes[i])
    expected = CLASS_NAMES[classes[index]]
    photo = tmp_path / "photo.png"
    Image.fromarray(images[index]).save(photo)
    model = tmp_path / "model_int8.tflite"
    shutil.copyfile(runtime_models.int8, model)

    command = edge_venv / "bin" / "edge-classify"
    assert command.is_file()
    # Run outside the checkout so only the installed package can be imported.
    result = _run([str(command), "--model", str(model), str(photo)], RUN_TIMEOUT_S, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # One line: the image, its label and a score in [0, 1].
    assert re.fullmatch(rf"{re.escape(str(photo))}: {expected} (0\.\d+|1\.0+)\n", result.stdout), result.stdout


@pytest.mark.parametrize("command, arguments, needs", [
    ("edge-train", ["--data", "photos", "--out", "run"], "TensorFlow and matplotlib"),
    ("edge-train", ["--out", "run"], "TensorFlow and matplotlib"),  # the default: CIFAR-10 through Keras
    ("edge-convert", ["--model", "model.keras", "--out", "run"], "TensorFlow"),
    ("edge-report", ["--out", "run"], "TensorFlow and matplotlib"),
])
def test_training_commands_on_a_device_install_name_the_extra(edge_venv: Path, tmp_path: Path, command: str,
                                                              arguments: list[str], needs: str):
    """Installed with only [edge], as on a device: one line naming what to install, exit 1, nothing written."""
    result = _run([str(edge_venv / "bin" / command), *arguments], RUN_TIMEOUT_S, cwd=tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    verb = "are" if " and " in needs else "is"
    assert result.stderr == (f"Error: {command} needs {needs}, which {verb} not installed here; install the "
                             f"training extra: pip install \"edge-image-toolkit[train]\"\n")
    assert result.stdout == ""
    assert list(tmp_path.iterdir()) == []


def test_the_wheel_carries_the_live_views_page_and_its_extra(wheel: Path):
    import zipfile

    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = next(archive.read(name).decode() for name in names if name.endswith(".dist-info/METADATA"))
    assert {f"edge_runtime/serve/static/{name}" for name in ("index.html", "app.js", "style.css")} <= names
    assert "Provides-Extra: serve" in metadata
    assert any(line.startswith("Requires-Dist: starlette") and 'extra == "serve"' in line
               for line in metadata.splitlines())


def test_installed_edge_classify_says_which_extra_serve_needs(edge_venv: Path, runtime_models, tmp_path: Path):
    video = tmp_path / "missing.avi"  # the extra is asked for before the camera is opened
    result = _run([str(edge_venv / "bin" / "edge-classify"), "--model", str(runtime_models.int8), "--camera",
                   str(video), "--serve", "127.0.0.1:0"], RUN_TIMEOUT_S, cwd=tmp_path)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == "Error: --serve needs the [serve] extra: pip install 'edge-image-toolkit[serve]'"
