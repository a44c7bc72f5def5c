"""A cache of decoded images on disk, so train, convert and report decode each image file once.

An entry is keyed by the files (their resolved paths, sizes and modification times, in order) and
by how they were decoded (every field of the preprocessing but the normalization, which is applied
later to batches, and Pillow's version): any change to a file or to the decoding makes a new key, so
a stale entry is never read. An entry holds the
uint8 images as a `.npy` file that is memory-mapped when read, so a large data set at 96x96 and above
costs page cache that the kernel can drop, not process memory; `kept` and `skipped` record which
files could not be decoded, with the reason given the first time.

Entries are written into a temporary folder and renamed into place, so an interrupted run leaves
nothing half-written that a later run could read. Only the most recently used entries are kept.

The cache lives in `$EDGE_TOOLKIT_CACHE` when set, else `$XDG_CACHE_HOME/edge-image-toolkit/decoded`
(by default `~/.cache/edge-image-toolkit/decoded`). `EDGE_TOOLKIT_CACHE=off` turns it off.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from edge_runtime.preprocess import PreprocessSpec

logger = logging.getLogger(__name__)

CACHE_ENV = "EDGE_TOOLKIT_CACHE"
OFF_VALUES = ("off", "0", "none", "")
APP_FOLDER = "edge-image-toolkit"
# Bump when what an entry holds, or how images are decoded, changes: old entries are then never read.
FORMAT_VERSION = 1
# Entries kept (the least recently used beyond this are removed): train, test and a second size or data set.
MAX_ENTRIES = 6
# Below this many files decoding is quicker than the bookkeeping; such sets are not cached.
MIN_FILES = 1000
# A temporary entry older than this belongs to a run that died (another run may still be writing a younger one).
ABANDONED_AFTER_SECONDS = 24 * 3600
IMAGES_FILE = "images.npy"
KEPT_FILE = "kept.npy"
INFO_FILE = "info.json"


@dataclasses.dataclass(frozen=True)
class CachedDecode:
    """What `decode_images` returns: images [N, H, W, 3] uint8, kept [N] bool, skipped (path, reason)."""

    images: np.ndarray
    kept: np.ndarray
    skipped: list[tuple[str, str]]


def cache_root() -> Path | None:
    """The cache folder, or None when the cache is turned off."""
    configured = os.environ.get(CACHE_ENV)
    if configured is not None:
        return None if configured.strip().lower() in OFF_VALUES else Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / APP_FOLDER / "decoded"


def cache_key(paths: Sequence[str | os.PathLike], spec: PreprocessSpec) -> str | None:
    """A key for decoding `paths` with `spec`, or None when a file cannot be looked at (no caching then)."""
    import PIL

    decoding = spec.to_dict()
    for normalization in ("scale", "offset"):  # applied later, to batches: not part of the decoded pixels
        decoding.pop(normalization, None)
    digest = hashlib.sha256()
    digest.update(json.dumps({"format": FORMAT_VERSION, "spec": decoding, "pillow": PIL.__version__},
                             sort_keys=True).encode())
    for path in paths:
        try:
            resolved = os.path.realpath(path)
            status = os.stat(resolved)
        except OSError:
            return None
        digest.update(f"\n{resolved}\t{status.st_size}\t{status.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def read(root: Path, key: str, count: int, spec: PreprocessSpec) -> CachedDecode | None:
    """The entry `key`, memory-mapped, or None when it is missing or does not match `count` and `spec`."""
    folder = root / key
    try:
        info = json.loads((folder / INFO_FILE).read_text())
        images = _mapped(folder / IMAGES_FILE)
        kept = np.load(folder / KEPT_FILE)
    except (OSError, ValueError) as error:
        if folder.exists():
            logger.info("decoded cache entry %s unreadable (%s); decoding again", folder, error)
        return None
    if images.shape != (count, spec.height, spec.width, 3) or images.dtype != np.uint8 or kept.shape != (count,):
        logger.info("decoded cache entry %s does not match; decoding again", folder)
        return None
    os.utime(folder)  # most recently used
    skipped = [(str(path), str(reason)) for path, reason in info.get("skipped", [])]
    return CachedDecode(images=images, kept=kept.astype(bool), skipped=skipped)


def new_entry(root: Path, count: int, spec: PreprocessSpec) -> tuple[Path, np.ndarray] | None:
    """A temporary entry folder in `root` and a writable memory-mapped images array inside it.

    None when the folder cannot be written (the caller then decodes into memory, uncached).
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=".partial-", dir=root))
    except OSError as error:
        logger.info("decoded cache %s not writable (%s); decoding without it", root, error)
        return None
    try:
        images = np.lib.format.open_memmap(folder / IMAGES_FILE, mode="w+", dtype=np.uint8,
                                           shape=(count, spec.height, spec.width, 3))
    except OSError as error:
        shutil.rmtree(folder, ignore_errors=True)
        logger.info("decoded cache %s not writable (%s); decoding without it", root, error)
        return None
    return folder, images


def commit(root: Path, key: str, folder: Path, images: np.ndarray, kept: np.ndarray,
           skipped: list[tuple[str, str]]) -> CachedDecode:
    """Finish the temporary entry `folder` and rename it to `key`; the images come back memory-mapped.

    When the rename fails (another run stored the same key first, or the disk filled up), the
    temporary folder is removed and the decoded arrays are still returned.
    """
    try:
        images.flush()
        np.save(folder / KEPT_FILE, kept)
        (folder / INFO_FILE).write_text(json.dumps({"format": FORMAT_VERSION, "count": int(len(kept)),
                                                    "skipped": [list(item) for item in skipped]}))
        os.rename(folder, root / key)
    except OSError as error:
        logger.info("decoded cache entry %s not stored (%s)", root / key, error)
        result = CachedDecode(images=np.array(images), kept=kept, skipped=skipped)
        del images
        shutil.rmtree(folder, ignore_errors=True)
        return result
    del images
    prune(root)
    return CachedDecode(images=_mapped(root / key / IMAGES_FILE), kept=kept, skipped=skipped)


def _mapped(path: Path) -> np.ndarray:
    """A stored images file, memory-mapped copy-on-write: a write would stay in this process and never reach
    the file, and the array counts as writable, which lets the trainer's input pipeline read the mapping in
    place (trainer.batches.as_tensor) instead of copying all of it."""
    return np.load(path, mmap_mode="c")


def discard(folder: Path) -> None:
    """Remove a temporary entry (decoding failed or was interrupted)."""
    shutil.rmtree(folder, ignore_errors=True)


def prune(root: Path, keep: int = MAX_ENTRIES) -> None:
    """Remove all but the `keep` most recently used entries, and temporary folders of dead runs."""
    try:
        entries = [entry for entry in root.iterdir() if entry.is_dir()]
    except OSError:
        return
    finished = sorted((entry for entry in entries if not entry.name.startswith(".")),
                      key=lambda entry: entry.stat().st_mtime, reverse=True)
    for entry in finished[keep:]:
        shutil.rmtree(entry, ignore_errors=True)
    for entry in entries:
        if entry.name.startswith(".partial-") and _age_seconds(entry) > ABANDONED_AFTER_SECONDS:
            shutil.rmtree(entry, ignore_errors=True)


def _age_seconds(folder: Path) -> float:
    """Seconds since `folder` last changed (0 when it is gone)."""
    try:
        return time.time() - folder.stat().st_mtime
    except OSError:
        return 0.0
