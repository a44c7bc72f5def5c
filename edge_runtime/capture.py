"""Saving camera frames for the next training: `DIR/<label>/<timestamp>.jpg` and a log line each.

The frames a model gets wrong on its own device (its camera, light and scene) are the best data to
train the next model on. `FrameSaver` writes them in the image-folder layout `edge-train --data DIR`
reads, one sub-folder per class, and appends one JSON line per saved frame to `DIR/captures.jsonl`
saying what the model answered. Frames are saved by rules (`parse_rule`: `unsure:0.6`,
`label:cat`; any rule matching saves, at most `per_minute` in any 60 s) or by a person choosing a
class on the live page (`FrameSaver.save`, not capped).

Nothing half-written is ever an image: each JPEG is written to a temporary file whose name starts
with "." (the trainer skips hidden files), flushed to disk, then linked under its final name, which
fails rather than replace a file already there. The log line is appended with one `os.write` on an
O_APPEND descriptor after the image is in place, so lines are never torn, even with two writers.
Disk errors become one-line `SaveError`s.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import errno
import io
import json
import logging
import os
import tempfile
import threading
import time
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .atomic import DEFAULT_FILE_MODE
from .errors import EdgeError
from .output import UNCERTAIN_LABEL

if TYPE_CHECKING:
    import numpy as np

    from .sources.live import LiveStatus

logger = logging.getLogger(__name__)

CAPTURE_LOG = "captures.jsonl"
DEFAULT_PER_MINUTE = 10
RATE_WINDOW_S = 60.0
JPEG_QUALITY = 92
MAX_LABEL_CHARS = 64
PAGE_REASON = "page"
UNSURE_PREFIX = "unsure:"
LABEL_PREFIX = "label:"
RULE_FORMS = ("unsure:T (save when the top score is under T, 0 < T <= 1) or "
              "label:NAME (save when the model answers NAME)")
# `edge-train --data DIR` reads DIR/train/ + DIR/test/ as a split data set: class folders so named
# would change how the whole folder is read.
RESERVED_FOLDERS = ("train", "test")
# Rule saves write model labels that are not folder names under this character instead.
SAFE_REPLACEMENT = "_"
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%S.%fZ"
ISO_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
JPEG_SUFFIX = ".jpg"
# Suffixes -1, -2 ... tried for frames saved in the same microsecond before giving up.
MAX_SAME_TIME_NAMES = 1000
# Errors of os.link on file systems without hard links (FAT on an SD card): rename instead.
NO_HARD_LINKS = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK)
LOG_FILE_MODE = 0o644


class CaptureError(EdgeError):
    """A frame cannot be saved as asked (a class name that is not a folder name, say)."""


class SaveError(CaptureError):
    """The disk refused a saved frame (full, read-only, no permission); `errno` says which."""

    def __init__(self, message: str, errno_code: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno_code


@dataclasses.dataclass(frozen=True)
class SaveRule:
    """One `--save-when` rule: `unsure:T` (`threshold`) or `label:NAME` (`label`); `text` as given.

    `label:NAME` compares NAME with the model's best class, even when the answer shown is
    "uncertain" because its score is under the threshold: the frame is saved in that class's folder,
    so the rule and the folder agree. `label:uncertain` is the exception: it matches uncertain
    answers (a model with a class of that name also matches it). Names compare exactly.
    """

    text: str
    threshold: float | None = None
    label: str | None = None

    def matches(self, status: LiveStatus) -> bool:
        if self.threshold is not None:
            return status.score < self.threshold
        if self.label == UNCERTAIN_LABEL and status.uncertain:
            return True
        return best_label(status) == self.label


def parse_rule(text: str) -> SaveRule:
    """A `--save-when` rule from its text; ValueError with a one-line message for anything else."""
    cleaned = text.strip()
    kind, _, value = cleaned.partition(":")
    kind = kind.strip().lower()
    if kind + ":" == UNSURE_PREFIX:
        try:
            threshold = float(value)
        except ValueError:
            threshold = float("nan")
        if not 0.0 < threshold <= 1.0:  # NaN fails too
            raise ValueError(f"{text!r}: the threshold must be a number with 0 < T <= 1 (unsure:T, e.g. unsure:0.6)")
        return SaveRule(f"{UNSURE_PREFIX}{value.strip()}", threshold=threshold)
    if kind + ":" == LABEL_PREFIX:
        name = value.strip()
        if not name:
            raise ValueError(f"{text!r}: the label is empty (label:NAME, e.g. label:cat)")
        return SaveRule(f"{LABEL_PREFIX}{name}", label=name)
    raise ValueError(f"{text!r}: not a save rule; use {RULE_FORMS}")


def best_label(status: LiveStatus) -> str:
    """The model's best class for a frame: `classes[0]` even under the threshold, since "uncertain"
    is not a class to train; the status's label only when there are no classes (NaN scores)."""
    return status.classes[0].label if status.classes else status.label


def label_problem(label: str) -> str | None:
    """Why `label` (already stripped) cannot name a class folder, or None when it can."""
    if not label:
        return "it is empty"
    if len(label) > MAX_LABEL_CHARS:
        return f"longer than {MAX_LABEL_CHARS} characters"
    for separator in ("/", "\\"):
        if separator in label:
            return f'it contains "{separator}"'
    if any(unicodedata.category(char) == "Cc" for char in label):
        return "it contains a control character"
    if label in (".", ".."):
        return f'"{label}" is not a folder of its own'
    if label.startswith("."):
        return 'it starts with "." (hidden folders are not read by edge-train)'
    if label in RESERVED_FOLDERS:
        return f'"{label}" would make edge-train read the folder as a {"/".join(RESERVED_FOLDERS)} split'
    return None


def check_label(label: str) -> str:
    """`label` stripped, when it can name a class folder; else CaptureError naming it and the reason."""
    cleaned = label.strip()
    problem = label_problem(cleaned)
    if problem is not None:
        raise CaptureError(f"class name {label!r} cannot be a folder name: {problem}")
    return cleaned


def safe_label(label: str) -> str:
    """A model label made into a folder name for rule saves: "/", "\\" and control characters become
    "_", as does a leading "."; it is cut to MAX_LABEL_CHARS; a reserved name gets a trailing "_"."""
    cleaned = "".join(SAFE_REPLACEMENT if char in "/\\" or unicodedata.category(char) == "Cc" else char
                      for char in label).strip()
    if cleaned.startswith("."):
        cleaned = SAFE_REPLACEMENT + cleaned[1:]
    cleaned = cleaned[:MAX_LABEL_CHARS].strip() or SAFE_REPLACEMENT
    return cleaned + SAFE_REPLACEMENT if cleaned in RESERVED_FOLDERS else cleaned


@dataclasses.dataclass(frozen=True)
class SavedFrame:
    """A frame on disk: `path` of the JPEG, `file` relative to the saver's folder, its class folder
    `label`, why it was saved (`reason`: a rule's text or "page") and when (`time`, ISO-8601 UTC)."""

    path: Path
    file: str
    label: str
    reason: str
    time: str


class FrameSaver:
    """Saves frames under `folder` by `rules` (at most `per_minute` in any 60 s; None: no cap) and on
    request (`save`). `consider` runs in the classification thread and `save` in a server's: the
    counters and the cap are guarded by one lock, naming and logging by another; JPEG encoding and
    writing the temporary file happen outside both.
    """

    def __init__(self, folder: str | os.PathLike, rules: Sequence[SaveRule] = (),
                 per_minute: int | None = DEFAULT_PER_MINUTE, clock: Callable[[], float] = time.monotonic,
                 wall_clock: Callable[[], float] = time.time, quality: int = JPEG_QUALITY) -> None:
        if per_minute is not None and per_minute < 1:
            raise ValueError(f"per_minute must be at least 1 (or None for no cap), not {per_minute}")
        self.folder = Path(folder)
        self.rules = tuple(rules)
        self.per_minute = per_minute
        self.quality = quality
        self._clock = clock
        self._wall_clock = wall_clock
        self._lock = threading.Lock()  # counters and the cap's window: held only for moments
        # Naming and logging (a disk flush) under their own lock, so a page save never holds up the cap check.
        self._publish_lock = threading.Lock()
        self._recent: collections.deque[float] = collections.deque()
        self.saved = 0
        self.skipped_by_cap = 0
        self.last_saved: Path | None = None
        self.error: CaptureError | None = None  # the error that stopped rule saves

    def matching_rule(self, status: LiveStatus) -> SaveRule | None:
        """The first rule that matches the frame's answer, or None."""
        return next((rule for rule in self.rules if rule.matches(status)), None)

    def consider(self, frame: np.ndarray, status: LiveStatus) -> SavedFrame | None:
        """Save `frame` under the model's best class when a rule matches and the cap allows.

        Cheap when nothing is saved: no encoding. A disk error is logged once, kept in `error`, and
        stops rule saves (None from then on) rather than failing every frame or the live loop.
        """
        if self.error is not None or not self.rules:
            return None
        rule = self.matching_rule(status)
        if rule is None:
            return None
        with self._lock:
            if self.error is not None or not self._take_slot():
                return None
        try:
            return self._write(frame, safe_label(best_label(status)), status, rule.text)
        except CaptureError as error:
            with self._lock:
                if self.error is None:
                    self.error = error
                    logger.debug("%s; no more frames will be saved by the rules", error)
            return None

    def save(self, frame: np.ndarray, label: str, status: LiveStatus | None,
             reason: str = PAGE_REASON) -> SavedFrame:
        """Save `frame` under the class a person chose (validated; CaptureError if not a folder name).

        Not rate-capped. SaveError on a disk error, which does not stop later saves of either kind.
        """
        return self._write(frame, check_label(label), status, reason)

    def folder_labels(self) -> list[str]:
        """The class folders already in the saver's folder, sorted (none before the first save; hidden
        and reserved names, which edge-train would not read as classes, left out)."""
        try:
            entries = list(os.scandir(self.folder))
        except FileNotFoundError:
            return []
        except OSError as error:
            raise SaveError(f"{self.folder}: cannot list class folders ({error.strerror or error})",
                            error.errno) from error
        return sorted(entry.name for entry in entries
                      if entry.is_dir() and label_problem(entry.name) is None)

    def summary_line(self) -> str:
        """What the saver did, for the end of a run: saved frames, those over the cap, a disk error."""
        frames = "frame" if self.saved == 1 else "frames"
        text = f"saved {self.saved} {frames} to {self.folder}"
        if self.skipped_by_cap:
            text += f" ({self.skipped_by_cap} over the {self.per_minute}-a-minute cap not saved)"
        if self.error is not None:
            text += f"; stopped saving: {self.error}"
        return text

    def _take_slot(self) -> bool:
        """Under the lock: count a rule save in the 60 s window, or a frame over the cap."""
        if self.per_minute is None:
            return True
        now = self._clock()
        while self._recent and self._recent[0] <= now - RATE_WINDOW_S:
            self._recent.popleft()
        if len(self._recent) >= self.per_minute:
            self.skipped_by_cap += 1
            return False
        self._recent.append(now)
        return True

    def _write(self, frame: np.ndarray, label: str, status: LiveStatus | None, reason: str) -> SavedFrame:
        """Encode, write beside the final name, publish under a new name, then log the line."""
        data = encode_jpeg(frame, self.quality)
        moment = datetime.datetime.fromtimestamp(self._wall_clock(), tz=datetime.timezone.utc)
        class_folder = self.folder / label
        try:
            class_folder.mkdir(parents=True, exist_ok=True)
            temporary = write_hidden_temporary(class_folder, data)
        except OSError as error:
            raise self._disk_error(error) from error
        try:
            with self._publish_lock:
                path = publish(temporary, class_folder, moment.strftime(TIMESTAMP_FORMAT))
                saved = SavedFrame(path, f"{label}/{path.name}", label, reason, moment.strftime(ISO_FORMAT))
                record = {"file": saved.file, "label": label, "reason": reason,
                          "answer": status.to_dict() if status is not None else None, "time": saved.time}
                try:
                    append_line(self.folder / CAPTURE_LOG, record)
                except OSError:
                    with contextlib.suppress(OSError):
                        path.unlink()  # every image in the folder has its line
                    raise
            with self._lock:
                self.saved += 1
                self.last_saved = path
        except OSError as error:
            raise self._disk_error(error) from error
        finally:
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
        logger.debug("saved %s (%s)", path, reason)
        return saved

    def _disk_error(self, error: OSError) -> SaveError:
        return SaveError(f"{self.folder}: cannot save frame ({error.strerror or error})", error.errno)


def encode_jpeg(frame: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes of an RGB uint8 HxWx3 frame at full resolution (a non-contiguous view is copied)."""
    import numpy as np
    from PIL import Image

    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
        raise ValueError(f"a frame must be RGB uint8 HxWx3, not {frame.dtype} {frame.shape}")
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def write_hidden_temporary(folder: Path, data: bytes) -> Path:
    """`data` in a new file of `folder` whose name starts with "." (never read as an image), on disk."""
    fd, name = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=folder)
    temporary = Path(name)
    try:
        with open(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, DEFAULT_FILE_MODE)  # mkstemp's 0600 would hide the image from other users
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    return temporary


def publish(temporary: Path, folder: Path, stem: str) -> Path:
    """Give `temporary` the name `stem.jpg` in `folder`, or `stem-1.jpg`, `stem-2.jpg`... when taken.

    A hard link fails when the name exists, so no file is ever replaced, even by another process;
    where the file system has no hard links, the name is checked and the file renamed instead.
    """
    for attempt in range(MAX_SAME_TIME_NAMES):
        final = folder / (f"{stem}-{attempt}" if attempt else stem)
        final = final.with_name(final.name + JPEG_SUFFIX)
        try:
            os.link(temporary, final)
            return final
        except FileExistsError:
            continue
        except OSError as error:
            if error.errno not in NO_HARD_LINKS:
                raise
            if final.exists():
                continue
            os.rename(temporary, final)
            return final
    raise CaptureError(f"{folder}: {MAX_SAME_TIME_NAMES} frames already saved at {stem}; not saving another")


def append_line(path: Path, record: dict[str, Any]) -> None:
    """Append `record` as one JSON line with a single write on an O_APPEND descriptor."""
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, LOG_FILE_MODE)
    try:
        written = os.write(fd, line)
        if written != len(line):
            # A full disk took part of the line: cut it off again unless another writer has appended since.
            end = os.lseek(fd, 0, os.SEEK_CUR)
            if os.fstat(fd).st_size == end:
                os.ftruncate(fd, end - written)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        os.fsync(fd)
    finally:
        os.close(fd)
