"""Importing TensorFlow quietly: its C++ start-up lines (CUDA probing, absl) go to the debug log.

Shared by the trainer and the converter, which import TensorFlow only when they need it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import tempfile
from typing import Any, Iterator

logger = logging.getLogger(__name__)

STDOUT_FD = 1
STDERR_FD = 2


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


def import_tensorflow() -> Any:
    """Import TensorFlow on first use, with its C++ info and warning logs off."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" not in sys.modules:
        with native_output_to_log():
            import tensorflow  # noqa: F401  (first import: its native noise goes to the log)
    import tensorflow as tf

    return tf
