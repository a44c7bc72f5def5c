"""Finding an interpreter package: the fallback order, the no-interpreter message, and the
tflite_runtime-with-numpy-2 SystemError turned into a sentence. Missing packages are simulated by
putting None in sys.modules; tflite_runtime by a stand-in module.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from edge_runtime.classify import Classifier
from edge_runtime.cli import main
from edge_runtime.errors import BackendError, ModelError
from edge_runtime.interpreter import (BACKEND_MODULES, INSTALL_HINT, load_interpreter_class, make_interpreter,
                                      numpy_major_version)

pytest_plugins = ("runtime_fixtures",)

LITERT = BACKEND_MODULES["ai_edge_litert"]
TFLITE_RUNTIME = BACKEND_MODULES["tflite_runtime"]
TENSORFLOW = BACKEND_MODULES["tensorflow"]
NUMPY2_SENTENCE = ("tflite_runtime was built for numpy 1.x and fails with numpy {version}: pip install 'numpy<2', "
                   "or use ai-edge-litert instead (pip install ai-edge-litert)")


def install_fake_tflite_runtime(monkeypatch: pytest.MonkeyPatch, interpreter_class: type) -> None:
    package = types.ModuleType("tflite_runtime")
    module = types.ModuleType(TFLITE_RUNTIME)
    module.Interpreter = interpreter_class
    package.interpreter = module
    monkeypatch.setitem(sys.modules, "tflite_runtime", package)
    monkeypatch.setitem(sys.modules, TFLITE_RUNTIME, module)


def block(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for name in modules:
        monkeypatch.setitem(sys.modules, name, None)  # `import name` now raises ImportError


class Numpy2BrokenInterpreter:
    """What tflite_runtime 2.14 wheels do under numpy 2: a bare SystemError on construction."""

    def __init__(self, **kwargs) -> None:
        raise SystemError("<built-in method CreateWrapperFromFile of PyCapsule object> returned a result "
                          "with an exception set")


def litert_class() -> type:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


def test_litert_comes_first(runtime_models) -> None:
    name, interpreter = make_interpreter(runtime_models.int8)
    assert name == "ai_edge_litert"
    assert interpreter.get_input_details()[0]["shape"].tolist() == [1, 32, 32, 3]


def test_without_litert_tflite_runtime_is_next(runtime_models, monkeypatch) -> None:
    interpreter_class = litert_class()
    reference = Classifier(runtime_models.int8)  # built before the block: ai_edge_litert
    block(monkeypatch, LITERT)
    install_fake_tflite_runtime(monkeypatch, interpreter_class)  # behaves like the real package
    classifier = Classifier(runtime_models.int8)
    assert (reference.backend, classifier.backend) == ("ai_edge_litert", "tflite_runtime")
    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(classifier.scores(pixels), reference.scores(pixels))


def test_without_litert_and_tflite_runtime_tensorflow_is_last(runtime_models, monkeypatch) -> None:
    block(monkeypatch, LITERT, TFLITE_RUNTIME)
    name, interpreter_class = load_interpreter_class()
    assert name == "tensorflow"
    assert interpreter_class.__module__ == TENSORFLOW


def test_no_interpreter_is_one_line_saying_what_to_install(runtime_models, monkeypatch) -> None:
    block(monkeypatch, LITERT, TFLITE_RUNTIME, TENSORFLOW)
    result = CliRunner().invoke(main, ["--model", str(runtime_models.int8), str(runtime_models.labels_file)])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: no TFLite interpreter found (ai_edge_litert is not installed; tflite_runtime is not installed; "
        f"tensorflow is not installed); {INSTALL_HINT}")
    assert INSTALL_HINT.startswith("install a TFLite interpreter: pip install ai-edge-litert")


def test_a_chosen_backend_that_is_missing_is_named(runtime_models, monkeypatch) -> None:
    block(monkeypatch, TFLITE_RUNTIME)
    result = CliRunner().invoke(main, ["--backend", "tflite_runtime", "--info", str(runtime_models.int8)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"Error: backend tflite_runtime is not installed; {INSTALL_HINT}"


def test_a_backend_that_breaks_on_import_is_skipped_and_reported(monkeypatch) -> None:
    broken = types.ModuleType(TFLITE_RUNTIME)

    def explode(name: str):
        raise AttributeError("_ARRAY_API not found")

    broken.__getattr__ = explode  # `module.Interpreter` fails like a numpy-1 extension under numpy 2
    block(monkeypatch, LITERT, TENSORFLOW)
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, TFLITE_RUNTIME, broken)
    with pytest.raises(BackendError, match=r"tflite_runtime fails to import \(AttributeError: _ARRAY_API not found\)"):
        load_interpreter_class()


def test_unknown_backend_name_is_refused() -> None:
    with pytest.raises(BackendError, match="unknown backend 'tpu'; choose one of ai_edge_litert, tflite_runtime, "
                                           "tensorflow"):
        load_interpreter_class("tpu")


@pytest.mark.parametrize("chosen", [True, False])
def test_tflite_runtime_systemerror_under_numpy2_becomes_a_sentence(runtime_models, monkeypatch,
                                                                    chosen: bool) -> None:
    install_fake_tflite_runtime(monkeypatch, Numpy2BrokenInterpreter)
    if not chosen:
        block(monkeypatch, LITERT)  # reached by the fallback order
    args = (["--backend", "tflite_runtime"] if chosen else []) + ["--model", str(runtime_models.int8), "x.jpg"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: " + NUMPY2_SENTENCE.format(version=np.__version__)
    assert "Traceback" not in result.output


def test_the_same_systemerror_under_numpy1_is_reported_as_a_model_load_failure(runtime_models, monkeypatch) -> None:
    install_fake_tflite_runtime(monkeypatch, Numpy2BrokenInterpreter)
    monkeypatch.setattr(np, "__version__", "1.26.4")
    with pytest.raises(ModelError, match=r"the tflite_runtime interpreter failed to load the model \(<built-in"):
        make_interpreter(runtime_models.int8, backend="tflite_runtime")


@pytest.mark.parametrize("version, major", [("2.4.6", 2), ("1.26.4", 1), ("10.0.0", 10), ("dev", 0)])
def test_numpy_major_version_compares_numbers_not_strings(version: str, major: int) -> None:
    assert numpy_major_version(version) == major


def test_interpreter_info_line_goes_to_the_log_not_the_terminal(runtime_models, tmp_path: Path) -> None:
    import subprocess

    code = ("import sys; from edge_runtime.interpreter import make_interpreter; "
            f"make_interpreter({str(runtime_models.int8)!r}); print('built')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "built\n"
    assert "INFO: Created TensorFlow Lite XNNPACK delegate" not in result.stderr
    assert result.stderr == ""
