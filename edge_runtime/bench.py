"""`edge-classify --benchmark`: how fast a model runs here, through the same Classifier the CLI uses.

Measures building the interpreter (with the model's metadata), the first inference (which pays
for lazy kernel setup), then `runs` more inferences of one preprocessed image: mean, p50 and p90
latency and images per second. The image is fixed random pixels, so file decoding is not timed.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import numpy as np

from .classify import Classifier

DEFAULT_RUNS = 200
PIXEL_SEED = 0
MILLISECONDS = 1000.0
MEDIAN_PERCENTILE = 50
P90_PERCENTILE = 90


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """Timings of one model on this machine; latencies in milliseconds."""

    model: str
    backend: str
    threads: int | None
    runs: int
    init_ms: float
    first_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float

    @property
    def images_per_second(self) -> float:
        return MILLISECONDS / self.mean_ms if self.mean_ms > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "images_per_second": self.images_per_second}

    def lines(self) -> list[str]:
        """The result for people, one fact per line."""
        return [
            f"model:        {self.model}",
            f"backend:      {self.backend}, {self.threads} thread{'s' if self.threads != 1 else ''}",
            f"init:         {self.init_ms:.1f} ms",
            f"first run:    {self.first_ms:.3f} ms",
            f"latency:      mean {self.mean_ms:.3f} ms, p50 {self.p50_ms:.3f} ms, "
            f"p90 {self.p90_ms:.3f} ms over {self.runs} runs",
            f"throughput:   {self.images_per_second:,.0f} images/s",
        ]


def latency_stats(seconds: np.ndarray) -> tuple[float, float, float]:
    """(mean, p50, p90) in milliseconds of per-run times in seconds."""
    milliseconds = np.asarray(seconds, dtype=np.float64) * MILLISECONDS
    return (float(milliseconds.mean()), float(np.percentile(milliseconds, MEDIAN_PERCENTILE)),
            float(np.percentile(milliseconds, P90_PERCENTILE)))


def benchmark_model(model_path: str | os.PathLike, threads: int | None = 1, runs: int = DEFAULT_RUNS,
                    backend: str | None = None,
                    clock: Callable[[], float] = time.perf_counter) -> BenchmarkResult:
    """Time building a Classifier for `model_path`, its first inference, then `runs` more.

    ModelError when the model cannot be loaded, or loads and then fails to run (at the first inference).
    """
    if runs < 1:
        raise ValueError(f"runs must be at least 1, not {runs}")
    start = clock()
    classifier = Classifier(model_path, threads=threads, backend=backend)
    init_s = clock() - start
    height, width = classifier.spec.height, classifier.spec.width
    pixels = np.random.default_rng(PIXEL_SEED).integers(0, 256, (height, width, 3), dtype=np.uint8)
    scores = classifier.scores
    start = clock()
    scores(pixels)
    first_s = clock() - start
    times = np.empty(runs, dtype=np.float64)
    for run in range(runs):
        start = clock()
        scores(pixels)
        times[run] = clock() - start
    mean_ms, p50_ms, p90_ms = latency_stats(times)
    return BenchmarkResult(model=str(model_path), backend=classifier.backend, threads=threads, runs=runs,
                           init_ms=init_s * MILLISECONDS, first_ms=first_s * MILLISECONDS,
                           mean_ms=mean_ms, p50_ms=p50_ms, p90_ms=p90_ms)
