"""Classifying a stream of image files with one Classifier, writing a line per file.

This loop is the hot path of `edge-classify folder/`: per image it reads and preprocesses the
file, runs the interpreter once, picks the top classes and hands them to the writer, and adds
nothing else that costs more than a few microseconds. A file that cannot be read is reported and
skipped; the others are still classified. Only reading and decoding are guarded per file: a model
that fails to run raises ModelError out of the loop (it would fail for every file, and it is not
the file's fault), and the caller reports it once. A Classifier set up for batches
(`use_batches`) reads up to a batch of files, invokes once, then writes their lines in order.
`workers.py` runs the same loop in several processes.
"""

from __future__ import annotations

import itertools
import logging
import time
import warnings
from typing import Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np
from PIL import Image

from .classify import Class, Classifier, label_for, top_classes
from .errors import ImageError
from .output import error_reason
from .sources.files import InputItem

logger = logging.getLogger(__name__)

MILLISECONDS = 1000.0
NO_USABLE_SCORES = "the model returned no usable scores (NaN)"


class ResultWriter(Protocol):
    """Where results go (see `output.HumanWriter` and `output.JsonWriter`)."""

    def result(self, path: str, classes: Sequence[Class], uncertain: bool, latency_ms: float) -> None: ...

    def error(self, path: str, reason: str) -> None: ...


class BatchSummary:
    """What a run over files did."""

    def __init__(self) -> None:
        self.classified = 0
        self.failed = 0
        self.seconds = 0.0
        self.interrupted = False

    @property
    def total(self) -> int:
        return self.classified + self.failed

    @property
    def images_per_second(self) -> float:
        return self.classified / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        """The run in one line for people: how many were classified, how fast, how many failed."""
        rate = f"in {self.seconds:.2f} s ({self.images_per_second:,.0f} images/s)"
        failed = f"; {self.failed} failed" if self.failed else ""
        if self.interrupted:
            return f"interrupted after {self.total} inputs: {self.classified} classified {rate}{failed}"
        return f"classified {self.classified} of {self.total} inputs {rate}{failed}"


def classify_files(classifier: Classifier, items: Iterable[InputItem], writer: ResultWriter,
                   top_k: int = 1, threshold: float = 0.0,
                   clock: Callable[[], float] = time.perf_counter) -> BatchSummary:
    """Classify every item, writing one result or error per item, in order.

    `latency_ms` covers reading, decoding, preprocessing and inference of one file; in a batch,
    the file's own reading, decoding and preprocessing plus its share of the batch's inference.
    A best score under `threshold` marks the result uncertain. Ctrl-C stops the run between
    files (between batches); the summary then says it was interrupted. A model that fails to run
    raises ModelError, after the lines of the files before it.
    """
    summary = BatchSummary()
    started = clock()
    try:
        classify_items(classifier, items, writer, top_k, threshold, clock, summary)
    except KeyboardInterrupt:
        summary.interrupted = True
    summary.seconds = clock() - started
    return summary


def classify_items(classifier: Classifier, items: Iterable[InputItem], writer: ResultWriter, top_k: int,
                   threshold: float, clock: Callable[[], float], summary: BatchSummary) -> None:
    """The loop of `classify_files`, counting into `summary`: one image per invoke, or batches."""
    # open_image enforces its own pixel limit on every file; Pillow's lower warning level
    # would only print noise for big photos under it. Set once here, not per file.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        if classifier.batch_size > 1:
            for chunk in chunked(items, classifier.batch_size):
                _classify_batch(classifier, chunk, writer, top_k, threshold, clock, summary)
        else:
            _classify_each(classifier, items, writer, top_k, threshold, clock, summary)


def chunked(items: Iterable[InputItem], size: int) -> Iterator[list[InputItem]]:
    """Consecutive lists of `size` items (the last may be shorter), drawn from `items` as needed."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def _classify_each(classifier: Classifier, items: Iterable[InputItem], writer: ResultWriter, top_k: int,
                   threshold: float, clock: Callable[[], float], summary: BatchSummary) -> None:
    load = classifier.load
    scores_of = classifier.scores
    labels = classifier.labels
    for item in items:  # the hot loop: keep it free of anything that costs per image
        path = item.path
        if item.error is not None:
            writer.error(path, item.error)
            summary.failed += 1
            continue
        start = clock()
        try:
            pixels = load(path)
        except ImageError as error:
            writer.error(path, error_reason(path, str(error)))
            summary.failed += 1
            continue
        except Exception as error:  # a decoder bug on a hostile file must not end the run
            logger.debug("unexpected failure on %s", path, exc_info=True)
            writer.error(path, f"cannot decode image ({type(error).__name__}: {error})")
            summary.failed += 1
            continue
        scores = scores_of(pixels)  # outside the guard: ModelError is the model's, and ends the run
        latency_ms = (clock() - start) * MILLISECONDS
        classes = top_classes(scores, labels, top_k)
        if not classes:  # only NaN scores compare false with every threshold
            writer.error(path, NO_USABLE_SCORES)
            summary.failed += 1
            continue
        writer.result(path, classes, classes[0].score < threshold, latency_ms)
        summary.classified += 1


def _classify_batch(classifier: Classifier, items: Sequence[InputItem], writer: ResultWriter, top_k: int,
                    threshold: float, clock: Callable[[], float], summary: BatchSummary) -> None:
    """Read up to a batch of files, invoke once for the readable ones, write every line in order."""
    load = classifier.load
    errors: dict[int, str] = {}
    images: list[np.ndarray] = []
    read_seconds: list[float] = []
    for position, item in enumerate(items):
        if item.error is not None:
            errors[position] = item.error
            continue
        start = clock()
        try:
            images.append(load(item.path))
        except ImageError as error:
            errors[position] = error_reason(item.path, str(error))
            continue
        except Exception as error:  # a decoder bug on a hostile file must not end the run
            logger.debug("unexpected failure on %s", item.path, exc_info=True)
            errors[position] = f"cannot decode image ({type(error).__name__}: {error})"
            continue
        read_seconds.append(clock() - start)
    scores = None
    share = 0.0
    if images:
        start = clock()
        scores = classifier.scores_batch(np.stack(images))  # ModelError ends the run: not these images' fault
        share = (clock() - start) / len(images)
    labels = classifier.labels
    answers = best_classes(scores, labels) if top_k == 1 and scores is not None else None
    row = 0
    for position, item in enumerate(items):
        reason = errors.get(position)
        if reason is not None:
            writer.error(item.path, reason)
            summary.failed += 1
            continue
        latency_ms = (read_seconds[row] + share) * MILLISECONDS
        classes = answers[row] if answers is not None else top_classes(scores[row], labels, top_k)
        row += 1
        if not classes:
            writer.error(item.path, NO_USABLE_SCORES)
            summary.failed += 1
            continue
        writer.result(item.path, classes, classes[0].score < threshold, latency_ms)
        summary.classified += 1


def best_classes(scores: np.ndarray, labels: list[str] | None) -> list[list[Class]] | None:
    """`top_classes(row, labels, 1)` of every row of a batch's scores, with one argmax for the batch."""
    if scores.ndim != 2 or scores.shape[1] == 0:
        return None
    best = scores.argmax(axis=1)
    best_scores = scores[np.arange(len(best)), best].tolist()
    # `score >= 0.0` as top_classes' default threshold: a NaN best score gives no class.
    return [[Class(index, label_for(index, labels), score)] if score >= 0.0 else []
            for index, score in zip(best.tolist(), best_scores)]
