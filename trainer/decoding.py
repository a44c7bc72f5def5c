"""Decoding image files into one uint8 array with the shared preprocessing, in order.

Every file goes through `edge_runtime.preprocess.load_image`, the one preprocessing definition, so
the arrays are exactly what the device computes for the same file. Large sets are decoded by a pool
of processes and kept in the on-disk cache (`trainer.decoded_cache`).
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import multiprocessing
import os
import signal
import sys
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from edge_runtime.errors import ImageError
from edge_runtime.preprocess import DEFAULT_SPEC, PreprocessSpec, load_image

from . import decoded_cache
from .progress import Progress

logger = logging.getLogger(__name__)

# Below this many files a process pool costs more to start than it saves.
PARALLEL_MIN_FILES = 4000
FILES_PER_TASK = 500
# Modules that run threads of their own; a process that has loaded one is not forked.
HEAVY_THREADED_MODULES = ("tensorflow", "keras", "torch", "jax")


def decode_images(paths: Sequence[Path], progress: Progress, workers: int | None = None,
                  spec: PreprocessSpec = DEFAULT_SPEC, cache: bool = True
                  ) -> tuple[np.ndarray, np.ndarray, list[tuple[str, str]]]:
    """Decode every file with the shared preprocessing at `spec`'s size, in order.

    Returns (images uint8 [len(paths), H, W, 3], kept bool [len(paths)], skipped (path, reason)).
    Unreadable files keep a zero image and `kept` False; each gets one warning. Large sets are
    decoded by a pool of processes: the result is the same array, only sooner. With `cache`, sets
    of `decoded_cache.MIN_FILES` files or more are decoded once into the on-disk cache and come back
    memory-mapped from there (copy-on-write: no write reaches the file), now and in later runs over
    the same files.
    """
    total = len(paths)
    root = decoded_cache.cache_root() if cache and total >= decoded_cache.MIN_FILES else None
    key = decoded_cache.cache_key(paths, spec) if root is not None else None
    entry = None
    if root is not None and key is not None:
        hit = decoded_cache.read(root, key, total, spec)
        if hit is not None:
            progress.message(f"decoded images: all {total:,} read from the cache {root / key}")
            for path, reason in hit.skipped:
                progress.warning(f"skipped {path}: {reason}")
            return hit.images, hit.kept, hit.skipped
        entry = decoded_cache.new_entry(root, total, spec)
    if entry is None:
        images = np.zeros((total, spec.height, spec.width, 3), dtype=np.uint8)
    else:
        images = entry[1]
    try:
        kept, skipped = _decode_into(images, paths, progress, workers, spec)
    except BaseException:
        if entry is not None:
            del images
            decoded_cache.discard(entry[0])
        raise
    if entry is None:
        return images, kept, skipped
    stored = decoded_cache.commit(entry[0].parent, key, entry[0], images, kept, skipped)
    return stored.images, stored.kept, stored.skipped


def _decode_into(images: np.ndarray, paths: Sequence[Path], progress: Progress, workers: int | None,
                 spec: PreprocessSpec) -> tuple[np.ndarray, list[tuple[str, str]]]:
    """Decode `paths` into `images` (in place); (kept, skipped) as `decode_images` returns them."""
    total = len(paths)
    kept = np.ones(total, dtype=bool)
    skipped: list[tuple[str, str]] = []
    chunks = [[str(p) for p in paths[start:start + FILES_PER_TASK]] for start in range(0, total, FILES_PER_TASK)]
    processes = _worker_count(workers) if total >= PARALLEL_MIN_FILES else 1
    logger.debug("decoding %d files in %d chunks with up to %d processes", total, len(chunks), processes)
    done = 0
    for chunk_index, (chunk_images, failures) in enumerate(_decode_chunks(chunks, processes, spec)):
        start = chunk_index * FILES_PER_TASK
        images[start:start + len(chunk_images)] = chunk_images
        for offset, reason in failures:
            path = chunks[chunk_index][offset]
            kept[start + offset] = False
            skipped.append((path, reason))
            progress.warning(f"skipped {path}: {reason}")
        done += len(chunk_images)
        progress.count("decoded images", done, total)
    return kept, skipped


def _worker_count(workers: int | None) -> int:
    if workers is not None:
        return max(1, workers)
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def _decode_chunks(chunks: list[list[str]], worker_count: int, spec: PreprocessSpec = DEFAULT_SPEC
                   ) -> Iterator[tuple[np.ndarray, list[tuple[int, str]]]]:
    """Yield `decode_chunk` results in chunk order, serially or from a process pool."""
    context = _pool_context()
    decode = functools.partial(decode_chunk, spec=spec)
    if worker_count <= 1 or len(chunks) <= 1 or context is None:
        for chunk in chunks:
            yield decode(chunk)
        return
    with concurrent.futures.ProcessPoolExecutor(max_workers=min(worker_count, len(chunks)), mp_context=context,
                                                initializer=_ignore_interrupts) as pool:
        try:
            yield from pool.map(decode, chunks)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _pool_context() -> multiprocessing.context.BaseContext | None:
    """The "fork" start method when it is safe here, else None (decode serially).

    Forking a process that has loaded TensorFlow copies locks held by its threads, so a pool is used
    only before TensorFlow is imported (the trainer loads data first). "spawn" is not used: it re-runs
    the caller's main script, which breaks scripts without an `if __name__ == "__main__"` guard.
    """
    if "fork" not in multiprocessing.get_all_start_methods():
        return None
    if any(name in sys.modules for name in HEAVY_THREADED_MODULES):
        return None
    return multiprocessing.get_context("fork")


def _ignore_interrupts() -> None:
    """Pool workers leave Ctrl-C to the parent, which stops the pool and reports once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def decode_chunk(paths: list[str], spec: PreprocessSpec = DEFAULT_SPEC) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode `paths` into one array; unreadable files give (position, reason) and a zero image."""
    images = np.zeros((len(paths), spec.height, spec.width, 3), dtype=np.uint8)
    failures = []
    for index, path in enumerate(paths):
        try:
            images[index] = load_image(path, spec)
        except ImageError as error:
            failures.append((index, _reason(str(error), path)))
        except OSError as error:  # e.g. a file removed while loading
            failures.append((index, f"cannot read ({error.strerror or error})"))
    return images, failures


def _reason(message: str, path: str) -> str:
    """The reason part of an ImageError message, which starts with the path."""
    prefix = f"{path}: "
    return message[len(prefix):] if message.startswith(prefix) else message
