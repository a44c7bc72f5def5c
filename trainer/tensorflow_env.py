"""Importing TensorFlow quietly: its C++ start-up lines (CUDA probing, absl) go to the debug log.

Shared by the trainer and the converter, which import TensorFlow only when they need it. A device
install (the `[edge]` extra) has no TensorFlow, Keras or matplotlib: `require_packages` says so in
one line before any work, and `import_tensorflow` does too rather than fail with a traceback.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
from typing import Any, Iterator, Sequence

from edge_runtime.errors import MissingPackageError

logger = logging.getLogger(__name__)

STDOUT_FD = 1
STDERR_FD = 2

TENSORFLOW = "tensorflow"
KERAS = "keras"
MATPLOTLIB = "matplotlib"
# What the [train] extra brings; edge-train and edge-report need all of it (they draw pictures),
# edge-convert only TensorFlow and Keras.
TRAIN_EXTRA_PACKAGES = (TENSORFLOW, KERAS, MATPLOTLIB)
CONVERT_PACKAGES = (TENSORFLOW, KERAS)
PACKAGE_TITLES = {TENSORFLOW: "TensorFlow", KERAS: "Keras", MATPLOTLIB: "matplotlib"}
TRAINING_EXTRA_HINT = 'install the training extra: pip install "edge-image-toolkit[train]"'


def is_installed(package: str) -> bool:
    """Whether `import package` can find it, without importing it (cheap enough for before any work)."""
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):  # a broken or half-imported package counts as missing
        return False


def missing_package_error(packages: Sequence[str], needed_by: str) -> MissingPackageError:
    """The one-line error for missing packages of the training extra.

    Keras is not named beside TensorFlow: installing TensorFlow brings it.
    """
    if TENSORFLOW in packages:
        packages = [name for name in packages if name != KERAS]
    titles = [PACKAGE_TITLES.get(name, name) for name in packages]
    named = titles[0] if len(titles) == 1 else ", ".join(titles[:-1]) + " and " + titles[-1]
    verb = "is" if len(titles) == 1 else "are"
    return MissingPackageError(f"{needed_by} needs {named}, which {verb} not installed here; {TRAINING_EXTRA_HINT}")


def require_packages(command: str, packages: Sequence[str] = TRAIN_EXTRA_PACKAGES) -> None:
    """Raise MissingPackageError naming `command` when any of `packages` is not installed.

    Called by the commands first, so that a device install says what to install before it reads data.
    """
    missing = [name for name in packages if not is_installed(name)]
    if missing:
        raise missing_package_error(missing, command)


@contextlib.contextmanager
def native_output_to_log() -> Iterator[None]:
    """Send what TensorFlow's C++ code writes straight to file descriptors 1 and 2 to the debug log.

    TensorFlow's import prints CUDA probing lines and the quantizer prints a status line, on the
    process's own descriptors where no setting silences them; the person should see only our
    progress lines. Failures still surface as Python exceptions.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        saved = {fd: os.dup(fd) for fd in (STDOUT_FD, STDERR_FD)}
    except OSError:  # no real descriptors (an embedded interpreter): nothing to redirect
        yield
        return
    with tempfile.TemporaryFile() as capture:
        try:
            for fd in saved:
                os.dup2(capture.fileno(), fd)
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    logger.debug("native output: %s", line)


def import_tensorflow(needed_by: str = "this command") -> Any:
    """Import TensorFlow (and check Keras is there) on first use, with its C++ info and warning logs off.

    Raises MissingPackageError, one line naming the extra to install, when either is not installed.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if sys.modules.get(TENSORFLOW) is None:  # None: an import already failed (or was blocked)
        try:
            with native_output_to_log():
                import tensorflow  # noqa: F401  (first import: its native noise goes to the log)
        except ModuleNotFoundError as error:
            if error.name != TENSORFLOW:
                raise  # TensorFlow is there but one of its own dependencies is not: keep the real cause
            raise missing_package_error([TENSORFLOW], needed_by) from error
    if not is_installed(KERAS):  # callers import keras next; Keras 3 is a package of its own
        raise missing_package_error([KERAS], needed_by)
    import tensorflow as tf

    return tf
