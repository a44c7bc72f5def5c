"""Class labels: one name per line, in class-index order."""

from __future__ import annotations

import os

from ..errors import ModelError
from .limits import LABELS, decode_text, read_file_bounded


def parse_labels(text: str) -> list[str]:
    """Parse labels text: one label per line, blank trailing lines ignored."""
    lines = [line.strip() for line in text.splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def read_labels(path: str | os.PathLike) -> list[str]:
    """Read a labels file; raise ModelError naming the file if it is missing, empty or over the
    limits every labels reader applies (`limits.LABELS_MAX_BYTES`, `limits.LABELS_MAX_LINES`)."""
    try:
        data = read_file_bounded(path, LABELS)
    except OSError as error:
        raise ModelError(f"{path}: cannot read labels file ({error.strerror or error})") from error
    labels = parse_labels(decode_text(data, LABELS, str(path)))
    if not labels:
        raise ModelError(f"{path}: labels file is empty")
    return labels


def format_labels(labels: list[str]) -> str:
    """Render labels in the on-disk format."""
    return "".join(f"{label}\n" for label in labels)


def write_labels(path: str | os.PathLike, labels: list[str]) -> None:
    """Write a labels file atomically."""
    from ..atomic import write_text  # only writers need it; keeps the device's start-up imports small

    write_text(path, format_labels(labels))
