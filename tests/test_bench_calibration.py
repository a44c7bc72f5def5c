"""benchmarks/bench_calibration.py's own arithmetic: the validation share it measures on is the one the
trainer held out, and its tie counts are what they say."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edge_runtime.errors import DataError
from trainer.validation import shuffled_split

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_calibration.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_calibration", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_validation_share_is_the_trainers(bench) -> None:
    _, held_out = shuffled_split(500, 0.05, 3)
    indices, seed = bench.validation_share({"seed": 3, "data": {"train": 475, "validation": 25}})
    assert seed == 3 and np.array_equal(indices, held_out)
    with pytest.raises(DataError, match="validation share"):
        bench.validation_share({"seed": 3, "data": {"train": 500, "validation": 0}})


def test_ties_and_the_images_a_tie_lost(bench) -> None:
    labels = np.array([0, 1, 2, 0])
    keras = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.2, 0.7], [0.2, 0.7, 0.1]])
    int8 = np.array([
        [0.5, 0.5, 0.0],  # tied with the true class first: answered right
        [0.5, 0.5, 0.0],  # tied, answered 0, the true class 1 among the tied, Keras right: lost to the tie
        [0.6, 0.2, 0.2],  # tied below the top only: no tie
        [0.4, 0.4, 0.2],  # tied and right in int8, wrong in Keras
    ])
    share, lost = bench.tie_figures(int8, keras, labels)
    assert share == pytest.approx(0.75) and lost == 1
