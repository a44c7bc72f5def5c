"""Atomic file writes: a crash never leaves a half-written file under the final name."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

DEFAULT_FILE_MODE = 0o644


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `final_path`; rename it into place only on success.

    The temporary file lives in the same folder so the final `os.replace` is atomic on POSIX.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name ends with the final extension: Keras and matplotlib pick formats from it.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".tmp{suffix or final.suffix}",
                                    dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; published outputs should be readable like any other file.
        os.chmod(tmp, DEFAULT_FILE_MODE)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes(final_path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `final_path` atomically."""
    with atomic_path(final_path) as tmp:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_text(final_path: str | os.PathLike, text: str) -> None:
    """Write `text` (UTF-8) to `final_path` atomically."""
    write_bytes(final_path, text.encode("utf-8"))
