"""Finding a TFLite interpreter package and building one interpreter per model.

Backends, in the order tried: ai_edge_litert (current Pythons, Raspberry Pi OS Bookworm and
Trixie), tflite_runtime (Python <= 3.11 with numpy < 2), then TensorFlow's own tf.lite. Each is
imported only here and only when asked for, so `edge-classify --help` stays instant.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
from typing import IO, Any, Callable, Iterator

from .errors import BackendError, ModelError

logger = logging.getLogger(__name__)

BACKEND_MODULES = {
    "ai_edge_litert": "ai_edge_litert.interpreter",
    "tflite_runtime": "tflite_runtime.interpreter",
    # tf.lite.Interpreter lives here; the `tensorflow.lite` package itself no longer exports it (TF >= 2.20).
    "tensorflow": "tensorflow.lite.python.interpreter",
}
BACKEND_ORDER = ("ai_edge_litert", "tflite_runtime", "tensorflow")
INSTALL_HINT = ("install a TFLite interpreter: pip install ai-edge-litert "
                "(or tflite-runtime with numpy<2 on Python <= 3.11, or tensorflow)")
NUMPY2_HINT = ("tflite_runtime was built for numpy 1.x and fails with numpy {numpy_version}: "
               "pip install 'numpy<2', or use ai-edge-litert instead (pip install ai-edge-litert)")
NUMPY2_MAJOR = 2
STDERR_FD = 2
NATIVE_INFO_PREFIX = "INFO: "
# A flatbuffer smaller than this cannot hold even an empty model's tables.
MIN_MODEL_BYTES = 16
# What graph_problem accepts. An operator's optional input is tensor -1 (a convolution's bias, say);
# these operators need their first inputs (data, then weights, and for a transposed convolution the
# output shape too); any other needs at least its first.
ABSENT_TENSOR = -1
REQUIRED_OPERANDS = {"CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "FULLY_CONNECTED": 2, "TRANSPOSE_CONV": 3}
IMAGE_RANK = 4
# The largest image classifiers take 600 (EfficientNet-B7) or 512 pixels a side; a side over this is damage.
MAX_INPUT_SIDE = 4096


def numpy_major_version(version: str) -> int:
    """The major number of a numpy version string ("2.4.6" -> 2); 0 when it cannot be read."""
    head = version.split(".", 1)[0]
    return int(head) if head.isdigit() else 0


def backend_names() -> tuple[str, ...]:
    """The backends this runtime knows, in the order it tries them."""
    return BACKEND_ORDER


def load_interpreter_class(backend: str | None = None) -> tuple[str, Callable[..., Any]]:
    """Return (backend name, Interpreter class) for `backend`, or the first that imports."""
    if backend is not None and backend not in BACKEND_MODULES:
        raise BackendError(f"unknown backend {backend!r}; choose one of {', '.join(BACKEND_ORDER)}")
    candidates = (backend,) if backend else BACKEND_ORDER
    failures: list[tuple[str, str]] = []
    for name in candidates:
        try:
            module = importlib.import_module(BACKEND_MODULES[name])
            return name, module.Interpreter
        except ImportError as error:
            failures.append((name, "is not installed"))
            logger.debug("backend %s not importable: %s", name, error)
        except Exception as error:  # a broken install fails in many ways; try the next backend
            first_line = (str(error).strip().splitlines() or [""])[0]
            failures.append((name, f"fails to import ({type(error).__name__}: {first_line})"))
            logger.debug("backend %s broken", name, exc_info=True)
    if backend:
        raise BackendError(f"backend {backend} {failures[0][1]}; {INSTALL_HINT}")
    tried = "; ".join(f"{name} {reason}" for name, reason in failures)
    raise BackendError(f"no TFLite interpreter found ({tried}); {INSTALL_HINT}")


def check_model_file(path: str | os.PathLike) -> None:
    """Refuse, with one line, a model path that is missing, empty or not a TFLite flatbuffer."""
    from .model_file.metadata import is_tflite_flatbuffer  # imported here so `edge-classify --help` needs no numpy

    if not os.path.exists(path):
        raise ModelError(f"{path}: model file not found")
    if os.path.isdir(path):
        raise ModelError(f"{path}: is a folder, not a .tflite model file")
    size = os.path.getsize(path)
    if size == 0:
        raise ModelError(f"{path}: model file is empty (0 bytes)")
    try:
        with open(path, "rb") as handle:
            head = handle.read(8)
    except OSError as error:
        raise ModelError(f"{path}: cannot read the model file ({error.strerror or error})") from error
    if size < MIN_MODEL_BYTES or not is_tflite_flatbuffer(head):
        raise ModelError(f"{path}: not a TFLite model (no 'TFL3' flatbuffer identifier)")


def make_interpreter(model_path: str | os.PathLike, threads: int | None = 1,
                     backend: str | None = None) -> tuple[str, Any]:
    """Build and allocate one interpreter for `model_path`; returns (backend name, interpreter).

    Build it once and reuse it for every image or frame: construction costs far more than a call.
    """
    check_model_file(model_path)
    name, interpreter_class = load_interpreter_class(backend)
    try:
        with native_stderr_to_log(logger, "interpreter", keep=_not_native_info):
            interpreter = interpreter_class(model_path=os.fspath(model_path), num_threads=threads)
            problem = graph_problem(interpreter)
            if problem is None:
                interpreter.allocate_tensors()
                problem = allocation_problem(interpreter)
    except SystemError as error:
        # tflite_runtime 2.14 wheels are compiled against numpy 1.x; with numpy 2 they fail like this.
        import numpy

        if name == "tflite_runtime" and numpy_major_version(numpy.__version__) >= NUMPY2_MAJOR:
            raise BackendError(NUMPY2_HINT.format(numpy_version=numpy.__version__)) from error
        raise ModelError(f"{model_path}: the {name} interpreter failed to load the model ({error})") from error
    except (ValueError, RuntimeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if "flatbuffer" in reason.lower():
            raise ModelError(f"{model_path}: not a valid TFLite model ({reason})") from error
        raise ModelError(f"{model_path}: the {name} interpreter cannot run this model ({reason})") from error
    if problem is not None:
        raise ModelError(f"{model_path}: the model's graph is damaged ({problem})")
    return name, interpreter


def graph_problem(interpreter: Any) -> str | None:
    """What is wrong with a built interpreter's graph that would crash it rather than fail cleanly; None if nothing.

    LiteRT trusts a model's operators: an output written into the graph's input or to tensor -1, or a
    convolution or dense layer without its weights, crashes the process (segmentation fault) when
    the tensors are allocated or at the first invoke. These are checked here, before allocation,
    from what the interpreter already parsed; and so is an input larger than any image classifier's,
    which would allocate gigabytes. A backend without the operator listing skips that part.
    """
    inputs = interpreter.get_input_details()
    for tensor in inputs:
        shape = [int(side) for side in tensor["shape"]]
        if len(shape) == IMAGE_RANK and any(side > MAX_INPUT_SIDE for side in shape[1:3]):
            return (f"input tensor of shape {shape}: larger than {MAX_INPUT_SIDE} pixels a side, more than any "
                    "image classifier takes")
    operators = _operators(interpreter)
    if operators is None:
        return None
    tensor_count = _tensor_count(interpreter)
    graph_inputs = {int(tensor["index"]) for tensor in inputs}
    for index, name, operands, results in operators:
        for tensor in operands + results:
            if tensor < ABSENT_TENSOR or (tensor_count is not None and tensor >= tensor_count):
                return f"operator {index} ({name}) names tensor {tensor} of {tensor_count}"
        for tensor in results:
            if tensor == ABSENT_TENSOR or tensor in graph_inputs:
                what = "no tensor" if tensor == ABSENT_TENSOR else f"the graph's input tensor {tensor}"
                return f"operator {index} ({name}) writes its result to {what}"
        required = REQUIRED_OPERANDS.get(name, 1)
        if ABSENT_TENSOR in operands[:required] or len(operands) < required:
            return f"operator {index} ({name}) lacks one of its first {required} inputs"
    return None


def _operators(interpreter: Any) -> list[tuple[int, str, list[int], list[int]]] | None:
    """(index, name, input tensors, output tensors) of each operator; None where the backend does not list them.

    Straight from the interpreter's wrapper where it has the calls (a fifth of the time of
    `_get_ops_details`, which also looks up every operand's type: about 1.7 ms on MobileNet v2 at
    every start), else through `_get_ops_details`.
    """
    wrapper = getattr(interpreter, "_interpreter", None)
    try:
        return [(node, str(wrapper.NodeName(node)), [int(tensor) for tensor in wrapper.NodeInputs(node)],
                 [int(tensor) for tensor in wrapper.NodeOutputs(node)]) for node in range(wrapper.NumNodes())]
    except (AttributeError, TypeError):
        pass
    list_operators = getattr(interpreter, "_get_ops_details", None)
    if list_operators is None:
        return None
    return [(operator.get("index", "?"), operator.get("op_name", "?"),
             [int(tensor) for tensor in operator.get("inputs", [])],
             [int(tensor) for tensor in operator.get("outputs", [])]) for operator in list_operators()]


def _tensor_count(interpreter: Any) -> int | None:
    """How many tensors the main graph has; None where the backend does not say.

    `get_tensor_details()` leaves out tensors without a name, so its length can be short of it.
    """
    wrapper = getattr(interpreter, "_interpreter", None)
    try:
        return int(wrapper.NumTensors(0))
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return None


def allocation_problem(interpreter: Any) -> str | None:
    """An image-shaped tensor that allocation left empty (a side of 0); None if there is none.

    A pooling or convolution whose window, stride or padding is damaged gets an output of no pixels,
    which XNNPACK does not check before it runs: the first invoke would crash the process. No
    working image classifier has such a tensor.
    """
    wrapper = getattr(interpreter, "_interpreter", None)
    count = _tensor_count(interpreter)
    try:
        # The wrapper's sizes, where it has the call: a third of the time of get_tensor_details().
        shapes = [(index, [int(side) for side in wrapper.TensorSize(index, 0)]) for index in range(count)]
    except (AttributeError, TypeError, ValueError):
        shapes = [(int(tensor["index"]), [int(side) for side in tensor["shape"]])
                  for tensor in interpreter.get_tensor_details()]
    for index, shape in shapes:
        if len(shape) == IMAGE_RANK and 0 in shape:
            name = next((tensor["name"] for tensor in interpreter.get_tensor_details() if tensor["index"] == index), "")
            return f"tensor {index} ({name}) has an empty shape {shape} after allocation"
    return None


def _not_native_info(line: str) -> bool:
    return not line.startswith(NATIVE_INFO_PREFIX)


@contextlib.contextmanager
def native_stderr_to_log(log: logging.Logger, source: str,
                         keep: Callable[[str], bool] | None = None) -> Iterator[None]:
    """Send what native code writes to file descriptor 2 inside the block to `log` (debug) instead
    of the terminal; lines for which `keep` says True still reach stderr.

    C++ libraries (the interpreter's "INFO: Created TensorFlow Lite XNNPACK delegate", OpenCV's
    backends) write to the descriptor directly and no setting silences all of them, so it is
    pointed at a nameless file for the duration.
    """
    try:
        sys.stderr.flush()
        saved_fd = os.dup(STDERR_FD)
    except (OSError, ValueError, AttributeError):
        yield  # no usable stderr to redirect (closed, or an embedded interpreter)
        return
    with _nameless_file() as capture:
        os.dup2(capture.fileno(), STDERR_FD)
        try:
            yield
        finally:
            os.dup2(saved_fd, STDERR_FD)
            os.close(saved_fd)
            capture.seek(0)
            text = capture.read().decode("utf-8", "replace")
    for line in text.splitlines():
        if keep is not None and keep(line) and line.strip():
            sys.stderr.write(line + "\n")
        elif line.strip():
            log.debug("%s: %s", source, line)


def _nameless_file() -> IO[bytes]:
    """A file with no name for captured output: in memory on Linux, else a temporary file."""
    if hasattr(os, "memfd_create"):
        try:
            return os.fdopen(os.memfd_create("edge-runtime-stderr"), "w+b")
        except OSError:
            pass
    import tempfile

    return tempfile.TemporaryFile()
