"""The runtime stays light: importing it, asking for help, or classifying a photo never loads
TensorFlow (seconds to import on a Pi), OpenCV, picamera2 or other heavy packages.

Each check runs in a fresh interpreter: this test process has TensorFlow loaded by the fixtures.
"""

from __future__ import annotations

import json
import os
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
               "edge_runtime.interpreter", "edge_runtime.batch", "edge_runtime.bench", "edge_runtime.info",
               "edge_runtime.output", "edge_runtime.sources.files", "edge_runtime.sources.camera",
               "edge_runtime.sources.live", "edge_runtime.model_file.choose", "edge_runtime.model_file.metadata",
               "edge_runtime.model_file.manifest", "edge_runtime.model_file.reader"]
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


# What a single photo costs at start-up (issue 20): every module imported is paid for at each start
# of `edge-classify photo.jpg`. The probe runs without `site` (its .pth hooks, such as an editable
# install's finder, import pathlib and more by themselves), with the installed packages on the path.
COLD_PATH_ABSENT = ("zipfile", "tempfile", "shutil", "pathlib", "shlex", "edge_runtime.model_file.official_metadata",
                    "edge_runtime.model_file.flatbuffer_check", "flatbuffers", "encodings.cp437",
                    "edge_runtime.fixed_point_resize", "edge_runtime.live_run", "edge_runtime.capture",
                    "edge_runtime.serve.server", "edge_runtime.sources.camera")
BARE_PROBE = """
import json, sys
sys.path[:0] = {paths!r}
from edge_runtime.cli import main
try:
    main({args!r}, prog_name="edge-classify")
except SystemExit as stop:
    assert stop.code == 0, stop.code
print(json.dumps(sorted(m for m in {absent!r} if m in sys.modules)))
"""


def loaded_without_site(args: list[str]) -> list[str]:
    import sysconfig

    # This process's environment (a venv's site-packages): `python -S` alone would not find it.
    installed = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    code = BARE_PROBE.format(paths=[str(REPO_ROOT), *installed], args=args, absent=COLD_PATH_ABSENT)
    result = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S,
                            cwd=REPO_ROOT)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_one_photo_with_our_model_loads_no_zip_temp_file_path_or_official_metadata_code(
        runtime_models, split_dataset: Path) -> None:
    """Our models carry everything in our own entries: no zipfile (bounded_zip reads the archive), no
    official-metadata parser or flatbuffers, no tempfile (only -o writes a file), no pathlib, not
    MediaPipe's resize (only models from elsewhere use it), and nothing of the camera run."""
    photo = split_dataset / "test" / "circle" / "0000.png"
    assert loaded_without_site(["--model", str(runtime_models.int8), str(photo)]) == []


def test_the_cold_path_probe_sees_modules_that_are_loaded(runtime_models, split_dataset: Path, tmp_path) -> None:
    """The same probe, with -o: tempfile is loaded then, so the probe can see what it looks for."""
    photo = split_dataset / "test" / "circle" / "0000.png"
    loaded = loaded_without_site(["--model", str(runtime_models.int8), "-o", str(tmp_path / "out.txt"), str(photo)])
    assert "tempfile" in loaded


THREADS_PROBE = """
import os, sys
sys.path.insert(0, {root!r})
from edge_runtime.cli import main
try:
    main({args!r}, prog_name="edge-classify")
except SystemExit as stop:
    assert stop.code == 0, stop.code
print(len(os.listdir("/proc/self/task")), os.environ.get("OPENBLAS_NUM_THREADS"))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux's /proc to count threads")
@pytest.mark.parametrize("given, threads, setting", [(None, 1, "1"), ("2", 2, "2")])
def test_numpy_blas_threads_are_not_started_unless_the_user_asks(runtime_models, split_dataset: Path, given,
                                                                 threads, setting) -> None:
    """edge-classify does no linear algebra: OpenBLAS's spinning helper threads only cost CPU (issue 20).
    One thread unless OPENBLAS_NUM_THREADS says otherwise, which is kept (2 threads: the helper is back)."""
    if (os.cpu_count() or 1) < threads:
        pytest.skip("OpenBLAS starts no helper thread on a single core")
    photo = split_dataset / "test" / "circle" / "0000.png"
    env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_NUM_THREADS"}
    if given is not None:
        env["OPENBLAS_NUM_THREADS"] = given
    code = THREADS_PROBE.format(root=str(REPO_ROOT), args=["--model", str(runtime_models.int8), str(photo)])
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT_S,
                            cwd=REPO_ROOT, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == f"{threads} {setting}"
