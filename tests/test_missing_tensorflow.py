"""A device install (the `[edge]` extra: no TensorFlow, Keras or matplotlib): edge-train, edge-convert and
edge-report say in one line what to install instead of crashing with a traceback; --help still works.

Each command runs in a fresh interpreter whose import system refuses the three packages exactly as an
install without them does (`ModuleNotFoundError: No module named 'keras'`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from synthetic import write_image_folder

REPO_ROOT = Path(__file__).resolve().parent.parent
HINT = 'install the training extra: pip install "edge-image-toolkit[train]"'
TIMEOUT_SECONDS = 120

# Installed first in the child: a meta-path finder that answers for the training extra's packages.
WITHOUT_TRAINING_EXTRA = """
import sys

class _WithoutTrainingExtra:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "keras", "matplotlib"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _WithoutTrainingExtra())
"""
# The console scripts of pyproject.toml, as the installed wheel runs them.
COMMANDS = {
    "edge-train": "from trainer.cli import main; main(prog_name='edge-train')",
    "edge-convert": "from converter.cli import main; main(prog_name='edge-convert')",
    "edge-report": "from converter.cli import report_main; report_main(prog_name='edge-report')",
}


def run_without_training_extra(command: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    code = WITHOUT_TRAINING_EXTRA + COMMANDS[command]
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=TIMEOUT_SECONDS, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})


def fake_keras_file(path: Path) -> Path:
    """A file that passes every check made before TensorFlow would be imported."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
    return path


def test_the_prelude_blocks_the_packages(tmp_path: Path) -> None:
    """The simulation itself: the packages fail to import like absent ones, and look absent to find_spec."""
    code = WITHOUT_TRAINING_EXTRA + (
        "from trainer.tensorflow_env import is_installed\n"
        "print([is_installed(n) for n in ('tensorflow', 'keras', 'matplotlib', 'numpy')])\n"
        "import keras\n")
    completed = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                               timeout=TIMEOUT_SECONDS, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert completed.stdout == "[False, False, False, True]\n"
    assert completed.stderr.strip().splitlines()[-1] == "ModuleNotFoundError: No module named 'keras'"


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_works_without_tensorflow(command: str, tmp_path: Path) -> None:
    completed = run_without_training_extra(command, ["--help"], tmp_path)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.startswith(f"Usage: {command} [OPTIONS]")
    assert completed.stderr == ""


def test_edge_convert_names_the_extra_to_install(tmp_path: Path) -> None:
    model = fake_keras_file(tmp_path / "artifacts" / "model.keras")
    completed = run_without_training_extra("edge-convert", ["--model", str(model)], tmp_path)
    assert completed.returncode == 1
    assert completed.stderr == f"Error: edge-convert needs TensorFlow, which is not installed here; {HINT}\n"
    assert completed.stdout == ""
    assert sorted(path.name for path in model.parent.iterdir()) == ["model.keras"]


def test_edge_report_names_the_extra_to_install(tmp_path: Path) -> None:
    fake_keras_file(tmp_path / "artifacts" / "model.keras")
    (tmp_path / "artifacts" / "model_int8.tflite").write_bytes(b"not read")
    completed = run_without_training_extra("edge-report", [], tmp_path)
    assert completed.returncode == 1
    assert completed.stderr == (f"Error: edge-report needs TensorFlow and matplotlib, which are not installed "
                                f"here; {HINT}\n")
    assert completed.stdout == ""


@pytest.fixture(scope="module")
def tiny_image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("tiny") / "images", per_class=5)


@pytest.mark.parametrize("with_data", [True, False], ids=["--data", "cifar-through-keras"])
def test_edge_train_says_what_to_install_before_any_work(with_data: bool, tiny_image_folder: Path,
                                                         tmp_path: Path) -> None:
    """One line and nothing else: no data decoded, and no `import keras` traceback for the default CIFAR-10."""
    args = ["--out", str(tmp_path / "out"), "--workers", "1"]
    args += ["--data", str(tiny_image_folder)] if with_data else []
    completed = run_without_training_extra("edge-train", args, tmp_path)
    assert completed.returncode == 1
    assert completed.stderr == (f"Error: edge-train needs TensorFlow and matplotlib, which are not installed "
                                f"here; {HINT}\n")
    assert completed.stdout == ""


def test_missing_package_messages() -> None:
    from edge_runtime.errors import EdgeError, MissingPackageError
    from trainer.tensorflow_env import missing_package_error

    error = missing_package_error(["tensorflow", "keras"], "edge-convert")
    assert isinstance(error, MissingPackageError) and isinstance(error, EdgeError)
    assert str(error) == f"edge-convert needs TensorFlow, which is not installed here; {HINT}"
    assert str(missing_package_error(["keras", "matplotlib"], "edge-train")) == (
        f"edge-train needs Keras and matplotlib, which are not installed here; {HINT}")


def test_require_packages_checks_each_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.tensorflow_env as tensorflow_env
    from edge_runtime.errors import MissingPackageError

    installed = {"tensorflow", "keras"}
    monkeypatch.setattr(tensorflow_env, "is_installed", lambda name: name in installed)
    tensorflow_env.require_packages("edge-convert", tensorflow_env.CONVERT_PACKAGES)  # all there: no error
    with pytest.raises(MissingPackageError) as raised:
        tensorflow_env.require_packages("edge-report")
    assert str(raised.value) == f"edge-report needs matplotlib, which is not installed here; {HINT}"
