"""The fuzzer of issue 14 on a short budget (seconds), and the harness `make fuzz` trusts: it counts
tracebacks, hangs and multi-line errors, and its worker runs under an address-space cap."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from benchmarks import fuzz_models
from benchmarks.fuzz_models import Case, build_seeds, mutated_models, read_everything, run_cases, save_seeds
from edge_runtime.errors import ModelError

REPO_ROOT = Path(__file__).resolve().parent.parent
SHORT_BUDGET = 150
WORKER_CASES = 40


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
    """A few seconds of mutated models: each is read, or refused with a one-line ModelError."""
    path = tmp_path / "case.tflite"
    outcomes = {"read": 0, "refused": 0}

    @settings(max_examples=SHORT_BUDGET, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                     HealthCheck.data_too_large])
    @given(mutated_models(list(seeds)))
    def check(case: Case) -> None:
        path.write_bytes(case.data)
        try:
            read_everything(path)
            outcomes["read"] += 1
        except ModelError as error:
            assert str(error) and "\n" not in str(error), (case.steps, str(error))
            outcomes["refused"] += 1

    check()
    # Both outcomes occur: the mutations reach past the first check, and they do damage.
    assert outcomes["read"] > 0 and outcomes["refused"] > 0, outcomes


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
