"""The fuzzer of issue 14 on a short budget (seconds), and the harness `make fuzz` trusts: it counts
tracebacks, hangs and multi-line errors, of the readers and of the Classifier built from what they
accept, its worker runs under an address-space cap, and building its seeds keeps TensorFlow's C++
logs off the terminal."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from benchmarks import fuzz_models
from benchmarks.fuzz_models import (RAN, REFUSED, Case, build_seeds, mutated_models, read_everything, run_cases,
                                    save_seeds, try_model)
from edge_runtime.errors import ModelError

REPO_ROOT = Path(__file__).resolve().parent.parent
SHORT_BUDGET = 150
WORKER_CASES = 40
# A line of TensorFlow's C++ logging ("I0000 00:00:1796600633.045251 6361 cudart_stub.cc:31] ...") or of absl's
# notice before it is set up.
TENSORFLOW_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\]|absl::InitializeLog|cuInit")


@pytest.fixture(scope="module")
def seeds():
    return build_seeds()


def test_seeds_read_back_whole(seeds, tmp_path) -> None:
    """Unmutated, every seed reads without error: the fuzz starts from valid models."""
    for seed in seeds:
        path = tmp_path / f"{seed.name}.tflite"
        path.write_bytes(seed.data)
        assert read_everything(path) == "read", seed.name
        path.write_bytes(seed.rebuilt(list(seed.entries)))
        assert read_everything(path) == "read", f"{seed.name}, rebuilt by the fuzzer's zip writer"


def test_short_fuzz_reads_or_refuses_in_one_line(seeds, tmp_path) -> None:
    """A few seconds of mutated models: each is refused by the readers with a one-line ModelError, or
    read and then classified, or refused by the interpreter with a one-line ModelError."""
    path = tmp_path / "case.tflite"
    outcomes: dict[str, int] = {}

    @settings(max_examples=SHORT_BUDGET, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(mutated_models(list(seeds)))
    def check(case: Case) -> None:
        path.write_bytes(case.data)
        outcome, message = try_model(path)
        assert message is None or (message and "\n" not in message), (case.steps, outcome, message)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    check()
    # The mutations reach past the readers' first check, and they do damage; some mutants run.
    assert outcomes.get(REFUSED, 0) > 0 and outcomes.get(RAN, 0) > 0, outcomes


@pytest.mark.parametrize("raised, field", [
    (KeyError("boom"), "tracebacks"), (MemoryError(), "tracebacks"), (ModelError("one\ntwo"), "refused"),
    (ModelError("a line"), "refused"),
])
def test_tally_counts_what_the_readers_raise(seeds, tmp_path, monkeypatch, raised, field) -> None:
    def reader(path: Path) -> str:
        raise raised

    monkeypatch.setattr(fuzz_models, "read_everything", reader)
    tally = fuzz_models.Tally()
    tally.record(Case("ours", ("none",), seeds[0].data), tmp_path / "case.tflite", time_cap_s=5.0)
    assert (tally.cases, getattr(tally, field)) == (1, 1)
    multi_line = isinstance(raised, ModelError) and "\n" in str(raised)
    assert len(tally.failures) == int(field == "tracebacks" or multi_line)


class FakeClassifier:
    """Stands in for the Classifier a case builds from what the readers accepted."""

    raised_at_load: BaseException | None = None
    raised_at_invoke: BaseException | None = None

    def __init__(self, path) -> None:
        if self.raised_at_load is not None:
            raise self.raised_at_load
        self.spec = types.SimpleNamespace(height=4, width=4)

    def scores(self, pixels):
        if self.raised_at_invoke is not None:
            raise self.raised_at_invoke
        return pixels.mean(axis=(0, 1))


@pytest.mark.parametrize("stage, raised, field", [
    ("load", ModelError("m.tflite: the interpreter cannot run this model (bad tensor)"), "load_refused"),
    ("invoke", ModelError("m.tflite: the interpreter cannot run this model (node 4 failed)"), "invoke_failed"),
    ("invoke", ModelError("m.tflite: two\nlines"), "invoke_failed"),
    ("invoke", RuntimeError("num_input_elements != num_output_elements"), "tracebacks"),
    ("load", ValueError("boom"), "tracebacks"),
    (None, None, "ran"),
])
def test_tally_counts_what_the_classifier_of_an_accepted_model_does(seeds, tmp_path, monkeypatch, stage, raised,
                                                                    field) -> None:
    """A model the readers accept is built and invoked: one-line ModelErrors pass, a bare RuntimeError
    from invoke (what an unwrapped interpreter failure looks like) is a traceback."""
    fake = type("Fake", (FakeClassifier,), {f"raised_at_{stage}": raised} if stage else {})
    monkeypatch.setattr(fuzz_models, "Classifier", fake)
    tally = fuzz_models.Tally()
    tally.record(Case("ours", ("none",), seeds[0].data), tmp_path / "case.tflite", time_cap_s=5.0)
    assert (tally.cases, getattr(tally, field)) == (1, 1)
    assert tally.read == int(field != "tracebacks") and tally.refused == 0
    multi_line = isinstance(raised, ModelError) and "\n" in str(raised)
    assert len(tally.failures) == int(field == "tracebacks" or multi_line)


def test_tally_counts_a_case_over_the_time_cap_as_a_hang(seeds, tmp_path, monkeypatch) -> None:
    def reader(path: Path) -> str:
        time.sleep(2.0)
        return "read"

    monkeypatch.setattr(fuzz_models, "read_everything", reader)
    tally = fuzz_models.Tally()
    started = time.perf_counter()
    tally.record(Case("ours", ("none",), seeds[0].data), tmp_path / "case.tflite", time_cap_s=0.2)
    assert tally.hangs == 1 and tally.read == 0
    assert time.perf_counter() - started < 1.5, "the cap stops the case"


def test_run_cases_runs_exactly_the_budget(seeds, tmp_path) -> None:
    tally = run_cases(list(seeds), 25, seed=3, time_cap_s=2.0, folder=tmp_path)
    assert tally.cases == 25 and tally.read + tally.refused == 25
    assert (tally.tracebacks, tally.hangs) == (0, 0), tally.failures


def test_worker_runs_under_an_address_space_cap_and_writes_its_figures(seeds, tmp_path) -> None:
    save_seeds(seeds, tmp_path / "seeds")
    result = tmp_path / "result.json"
    completed = subprocess.run(
        [sys.executable, str(REPO_ROOT / "benchmarks" / "fuzz_models.py"), "--worker", "--seeds", str(tmp_path / "seeds"),
         "--result", str(result), "--cases", str(WORKER_CASES), "--seed", "1", "--address-space-mib", "256"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT)
    assert completed.returncode == 0, completed.stderr
    figures = json.loads(result.read_text())
    assert figures["cases"] == WORKER_CASES
    assert (figures["tracebacks"], figures["hangs"]) == (0, 0), figures["failures"]
    assert 0 < figures["baseline_rss_mib"] <= figures["max_case_peak_rss_mib"]
    assert 0 <= figures["max_case_rss_rise_mib"] < fuzz_models.DEFAULT_MEMORY_CAP_MIB


def test_building_the_seeds_keeps_tensorflows_cpp_logs_off_the_terminal() -> None:
    """`make fuzz` builds its seeds with TensorFlow, whose C++ start-up lines (CUDA probing, a cuInit
    error on a machine without a GPU, the converter's logs) must not reach the terminal."""
    environment = {name: value for name, value in os.environ.items() if name != "TF_CPP_MIN_LOG_LEVEL"}
    completed = subprocess.run(
        [sys.executable, "-c", "from benchmarks.fuzz_models import build_seeds; build_seeds()"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=environment)
    assert completed.returncode == 0, completed.stderr
    noise = [line for line in (completed.stderr + completed.stdout).splitlines() if TENSORFLOW_LOG_LINE.search(line)]
    assert noise == []
