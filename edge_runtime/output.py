"""How results are written: one line per image for people, or JSON lines for programs.

Both writers take already computed classes and write to a text stream the caller owns (stdout,
or a file opened by the CLI). They sit on the per-image path of a 10,000-image run, so they build
each line with one f-string, encode each label once, and never flush per line (to a pipe or file
the CLI wraps stdout in a BlockWriter, which writes lines in blocks).
"""

from __future__ import annotations

import json
from typing import Sequence, TextIO

from .classify import Class

UNCERTAIN_LABEL = "uncertain"
# Between the classes of a text line and the labels --info lists: labels themselves hold commas
# (ImageNet's "bow tie, bow-tie, bowtie"), so a comma cannot separate them.
LABEL_SEPARATOR = " | "
HUMAN_SCORE_DIGITS = 3
JSON_SCORE_DIGITS = 6
JSON_LATENCY_DIGITS = 3
# Lines gathered before one write to a pipe or file (about 40 KB of JSON lines).
BLOCK_LINES = 256
# json's own C string encoder: escapes quotes, control characters and everything non-ASCII
# (including the lone surrogates of undecodable file names), so every line is valid JSON.
_encode_json_string = json.encoder.encode_basestring_ascii


def error_reason(path: str, message: str) -> str:
    """The reason part of an error message, without the path it starts with."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message


def display_path(path: str) -> str:
    """A path as text a terminal can print, even when its bytes are not valid UTF-8."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class BlockWriter:
    """A text sink that gathers lines and writes them to `stream` in blocks.

    For stdout sent to a pipe or file: one write per block instead of one per line, even when
    the environment made stdout unbuffered (PYTHONUNBUFFERED). A write may carry several lines
    (the worker processes send a chunk's lines at once); blocks are counted in lines. `flush`
    writes what is pending. A block is taken off the pending list before it is written, so a
    write cut short by Ctrl-C is never written a second time by the final flush.
    """

    def __init__(self, stream: TextIO, block_lines: int = BLOCK_LINES):
        self._stream = stream
        self._block_lines = block_lines
        self._pending: list[str] = []
        self._pending_lines = 0

    def write(self, text: str) -> None:
        self._pending.append(text)
        self._pending_lines += text.count("\n")
        if self._pending_lines >= self._block_lines:
            self._write_pending()

    def _write_pending(self) -> None:
        block = "".join(self._pending)
        self._pending.clear()
        self._pending_lines = 0
        self._stream.write(block)

    def flush(self) -> None:
        if self._pending:
            self._write_pending()
        self._stream.flush()


def result_stream(stream: TextIO) -> TextIO | BlockWriter:
    """Where results for `stream` go: line by line to a terminal; in blocks to a pipe or file,
    whatever PYTHONUNBUFFERED says."""
    return stream if _is_terminal(stream) else BlockWriter(stream)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class HumanWriter:
    """`photo.jpg: cat 0.912` lines on `out`; problems as `photo.jpg: error: reason` on `err`.

    With several classes: `photo.jpg: cat 0.912 | dog 0.051`, each class a label, a space and
    its score, classes apart by LABEL_SEPARATOR (labels may contain commas and spaces).
    """

    def __init__(self, out: TextIO, err: TextIO):
        self._out = out
        self._err = err

    def result(self, path: str, classes: Sequence[Class], uncertain: bool, latency_ms: float) -> None:
        digits = HUMAN_SCORE_DIGITS
        shown = LABEL_SEPARATOR.join(f"{c.label} {c.score:.{digits}f}" for c in classes)
        text = f"{UNCERTAIN_LABEL} ({shown})" if uncertain else shown
        self._out.write(f"{display_path(path)}: {text}\n")

    def error(self, path: str, reason: str) -> None:
        self._err.write(f"{display_path(path)}: error: {reason}\n")
        self._err.flush()

    def flush(self) -> None:
        self._out.flush()


class JsonWriter:
    """One JSON object per line on `out`.

    A result: `{"path", "label", "score", "top_k": [{"label", "score"}...], "latency_ms"}`, plus
    `"uncertain": true` when the best score is under the threshold (then `label` is "uncertain"
    and `score` is still the best score). A failed input: `{"path", "error"}`.
    """

    def __init__(self, out: TextIO):
        self._out = out
        self._label_json: dict[str, str] = {}

    def _label(self, label: str) -> str:
        encoded = self._label_json.get(label)
        if encoded is None:
            encoded = self._label_json[label] = _encode_json_string(label)
        return encoded

    def result(self, path: str, classes: Sequence[Class], uncertain: bool, latency_ms: float) -> None:
        digits = JSON_SCORE_DIGITS
        top = classes[0]
        top_label = self._label(top.label)
        top_k = f'{{"label": {top_label}, "score": {top.score:.{digits}f}}}'
        if len(classes) > 1:
            top_k += "".join(f', {{"label": {self._label(c.label)}, "score": {c.score:.{digits}f}}}'
                             for c in classes[1:])
        label = self._label(UNCERTAIN_LABEL) if uncertain else top_label
        flag = ', "uncertain": true' if uncertain else ""
        self._out.write(f'{{"path": {_encode_json_string(path)}, "label": {label}, '
                        f'"score": {top.score:.{digits}f}, "top_k": [{top_k}], '
                        f'"latency_ms": {latency_ms:.{JSON_LATENCY_DIGITS}f}{flag}}}\n')

    def error(self, path: str, reason: str) -> None:
        self._out.write(f'{{"path": {_encode_json_string(path)}, "error": {_encode_json_string(reason)}}}\n')

    def flush(self) -> None:
        self._out.flush()


def make_writer(as_json: bool, out: TextIO, err: TextIO) -> HumanWriter | JsonWriter:
    """The writer `edge-classify` uses: JSON lines on `out`, or text with problems on `err`."""
    return JsonWriter(out) if as_json else HumanWriter(out, err)
