"""The runtime stays light: importing it, asking for help, or classifying a photo never loads
TensorFlow (seconds to import on a Pi), OpenCV, picamera2 or other heavy packages.

Each check runs in a fresh interpreter: this test process has TensorFlow loaded by the fixtures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ("runtime_fixtures",)

REPO_ROOT = Path(__file__).resolve().parent.parent
HEAVY_MODULES = ("tensorflow", "keras", "cv2", "picamera2", "matplotlib", "scipy", "pandas", "jsonschema",
                 "importlib.metadata", "h5py")
TIMEOUT_S = 60

PROBE = """
import json, sys
{body}
heavy = {heavy!r}
print(json.dumps({{"loaded": sorted(m for m in heavy if m in sys.modules),
                   "light": sorted(m for m in ("numpy", "PIL") if m in sys.modules)}}))
"""


def loaded_after(body: str) -> dict[str, list[str]]:
    code = PROBE.format(body=body, heavy=HEAVY_MODULES)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S,
                            cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_cli(args: list[str]) -> str:
    return ("from edge_runtime.cli import main\n"
            "try:\n"
            f"    main({args!r}, prog_name='edge-classify')\n"
            "except SystemExit as stop:\n"
            "    assert stop.code == 0, stop.code\n")


def test_importing_every_runtime_module_loads_nothing_heavy() -> None:
    modules = ["edge_runtime", "edge_runtime.cli", "edge_runtime.classify", "edge_runtime.preprocess",
               "edge_runtime.interpreter", "edge_runtime.camera", "edge_runtime.live", "edge_runtime.batch",
               "edge_runtime.bench", "edge_runtime.info", "edge_runtime.inputs", "edge_runtime.output",
               "edge_runtime.model_select", "edge_runtime.metadata", "edge_runtime.manifest"]
    assert loaded_after("\n".join(f"import {name}" for name in modules))["loaded"] == []


def test_help_loads_not_even_numpy_or_pillow() -> None:
    modules = loaded_after(run_cli(["--help"]))
    assert modules == {"loaded": [], "light": []}


def test_classifying_a_photo_loads_nothing_heavy(runtime_models, split_dataset: Path) -> None:
    photo = split_dataset / "test" / "circle" / "0000.png"
    modules = loaded_after(run_cli(["--model", str(runtime_models.int8), "--json", str(photo)]))
    assert modules == {"loaded": [], "light": ["PIL", "numpy"]}


@pytest.mark.parametrize("option", ["--info", "--benchmark"])
def test_info_and_benchmark_load_nothing_heavy(runtime_models, option: str) -> None:
    modules = loaded_after(run_cli([option, str(runtime_models.int8)]))
    assert modules["loaded"] == []
