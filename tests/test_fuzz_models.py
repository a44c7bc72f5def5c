"""The fuzzer of issue 14 on a short budget (seconds), and the harness `make fuzz` trusts: it counts
tracebacks, hangs and multi-line errors, of the readers and of the Classifier built from what they
accept, its worker runs under an address-space cap, a case that kills the worker is a crash after
which the run goes on, and building its seeds keeps TensorFlow's C++ logs off the terminal.

Its graph writes reach what only invoke checks: on the Flatten seeds, the Reshape's size constant and
the int8 Dense weights' zero point, rewritten, make models that load and fail when invoked (the
damages of tests/test_model_failure.py, made by the fuzzer's own mutation)."""

from __future__ import annotations

import json
import os
import re
import struct
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

from benchmarks import fuzz_models
from benchmarks.fuzz import run as fuzz_run
from benchmarks.fuzz.graph import (CONSTANT, OPERAND, OPTION, SCALE, SHAPE, ZERO_POINT, GraphValue, graph_values,
                                   write_graph_value)
from benchmarks.fuzz.mutations import Case
from benchmarks.fuzz.parent import run_workers
from benchmarks.fuzz.run import INVOKE_FAILED, RAN, read_everything, run_cases, try_model
from benchmarks.fuzz.seeds import LABELS, Seed, build_seeds, load_seeds, save_seeds
from edge_runtime.errors import ModelError

REPO_ROOT = Path(__file__).resolve().parent.parent
# The short run: make fuzz's own seed and strategy, in its worker (a crash in native code cannot take the
# test session with it). With this budget it reaches about five invoke failures.
SHORT_BUDGET = 300
WORKER_CASES = 40
FLATTEN_SEEDS = ("ours-flatten", "official-flatten", "ours-flatten-int8")
FLAT = 196  # MaxPool(Conv2D(4, 3) of 16x16): 7x7x4 values, flattened by the Reshape
BAD_ZERO_POINT = 5
CRASH_BUDGET = 12
CRASH_AT = 5
# Stands in for the worker script: the real worker, whose case CRASH_AT kills the first worker as a crash in
# native code would.
CRASHING_WORKER = """
import json, os, signal, sys
sys.path.insert(0, {root!r})
from benchmarks import fuzz_models
from benchmarks.fuzz import run

run_model = run.try_model
first_worker = sys.argv[sys.argv.index("--restart") + 1] == "0"

def try_model(path):
    progress = path.parent / run.PROGRESS_FILE
    if first_worker and progress.exists() and json.loads(progress.read_text())["index"] == {crash_at}:
        os.kill(os.getpid(), signal.SIGSEGV)
    return run_model(path)

run.try_model = try_model
sys.exit(fuzz_models.main(sys.argv[1:]))
"""
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


def test_seeds_run_whole(seeds, tmp_path) -> None:
    """Unmutated, every seed is read and classifies an image: an invoke failure is the mutation's doing."""
    for seed in seeds:
        path = tmp_path / f"{seed.name}.tflite"
        path.write_bytes(seed.data)
        assert try_model(path) == (RAN, None), seed.name


def test_short_fuzz_reads_or_refuses_in_one_line_and_reaches_invoke(seeds, tmp_path) -> None:
    """A few seconds of mutated models: each is refused by the readers with a one-line ModelError, or
    read and then classified, or refused by the interpreter, at load or at invoke, with a one-line
    ModelError; nothing crashes or hangs. The mutations reach past the readers' first check, and they
    do damage; some mutants run, and some load and then fail when invoked."""
    save_seeds(seeds, tmp_path / "seeds")
    figures, stopped = run_workers(tmp_path, SHORT_BUDGET, fuzz_models.DEFAULT_SEED, fuzz_models.DEFAULT_TIME_CAP_S,
                                   fuzz_models.DEFAULT_ADDRESS_SPACE_MIB)
    assert stopped is None and figures is not None
    assert figures["cases"] == SHORT_BUDGET
    failed = {name: figures[name] for name in ("tracebacks", "multi_line", "crashes", "hangs")}
    assert failed == dict.fromkeys(failed, 0), figures["failures"]
    assert figures["refused"] > 0 and figures["ran"] > 0 and figures["load_refused"] > 0, figures
    assert figures["invoke_failed"] >= 1, figures


@pytest.mark.parametrize("raised, field", [
    (KeyError("boom"), "tracebacks"), (MemoryError(), "tracebacks"), (ModelError("one\ntwo"), "refused"),
    (ModelError("a line"), "refused"),
])
def test_tally_counts_what_the_readers_raise(seeds, tmp_path, monkeypatch, raised, field) -> None:
    def reader(path: Path) -> str:
        raise raised

    monkeypatch.setattr(fuzz_run, "read_everything", reader)
    tally = fuzz_run.Tally()
    tally.record(Case("ours", ("none",), seeds[0].data), tmp_path / "case.tflite", time_cap_s=5.0)
    assert (tally.cases, getattr(tally, field)) == (1, 1)
    multi_line = isinstance(raised, ModelError) and "\n" in str(raised)
    assert tally.multi_line == int(multi_line)
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
    monkeypatch.setattr(fuzz_run, "Classifier", fake)
    tally = fuzz_run.Tally()
    tally.record(Case("ours", ("none",), seeds[0].data), tmp_path / "case.tflite", time_cap_s=5.0)
    assert (tally.cases, getattr(tally, field)) == (1, 1)
    assert tally.read == int(field != "tracebacks") and tally.refused == 0
    multi_line = isinstance(raised, ModelError) and "\n" in str(raised)
    assert len(tally.failures) == int(field == "tracebacks" or multi_line)


def test_tally_counts_a_case_over_the_time_cap_as_a_hang(seeds, tmp_path, monkeypatch) -> None:
    def reader(path: Path) -> str:
        time.sleep(2.0)
        return "read"

    monkeypatch.setattr(fuzz_run, "read_everything", reader)
    tally = fuzz_run.Tally()
    started = time.perf_counter()
    tally.record(Case("ours", ("none",), seeds[0].data), tmp_path / "case.tflite", time_cap_s=0.2)
    assert tally.hangs == 1 and tally.read == 0
    assert time.perf_counter() - started < 1.5, "the cap stops the case"


def test_run_cases_runs_exactly_the_budget(seeds, tmp_path) -> None:
    tally = run_cases(list(seeds), 25, seed=3, time_cap_s=2.0, folder=tmp_path)
    assert tally.cases == 25 and tally.read + tally.refused == 25
    assert (tally.tracebacks, tally.hangs) == (0, 0), tally.failures


# --- graph writes: what only the interpreter reads -----------------------------------------------

def _seed(seeds, name: str) -> Seed:
    return next(seed for seed in seeds if seed.name == name)


def _value(seed: Seed, value: GraphValue) -> int | float:
    return struct.unpack_from(value.form, seed.data, value.position)[0]


def test_graph_values_are_found_in_every_seed(seeds) -> None:
    """Every seed offers each kind its graph has; the Flatten seeds have exactly one int32 constant FLAT,
    the Reshape's size, which PACK turns into the shape RESHAPE checks at invoke."""
    for seed in seeds:
        kinds = {CONSTANT, SHAPE, OPERAND, OPTION} | ({SCALE, ZERO_POINT} if seed.name.endswith("int8") else set())
        assert set(seed.graph) == kinds, seed.name
        assert seed.graph == {kind: tuple(value for value in graph_values(seed.prefix) if value.kind == kind)
                              for kind in kinds}
    for name in FLATTEN_SEEDS:
        seed = _seed(seeds, name)
        sizes = [value for value in seed.graph[CONSTANT] if value.form == "<i" and _value(seed, value) == FLAT]
        assert len(sizes) == 1, name


def test_graph_writes_leave_the_metadata_readers_a_model_they_accept(seeds, tmp_path) -> None:
    """The readers do not look at the graph: a graph write reaches the interpreter."""
    path = tmp_path / "case.tflite"
    for seed in seeds:
        for kind, values in seed.graph.items():
            for value in (values[0], values[-1]):
                path.write_bytes(write_graph_value(seed.data, value, 0))
                assert read_everything(path) == "read", (seed.name, kind, value.where)


def _invoke_failure(seeds, tmp_path, seed_name: str, kind: str, chosen, new: int) -> tuple[fuzz_run.Tally, str]:
    """Apply the graph write `chosen` (a predicate on the seed's values of `kind`) to the seed once, run it
    as a fuzz case, and return the tally and the interpreter's message."""
    seed = _seed(seeds, seed_name)
    value = next(value for value in seed.graph[kind] if chosen(seed, value))
    data = write_graph_value(seed.data, value, new)
    tally = fuzz_run.Tally()
    tally.record(Case(seed.name, (f"{value.where}: {_value(seed, value)} -> {new}",), data), tmp_path / "case.tflite",
                 time_cap_s=5.0)
    outcome, message = try_model(tmp_path / "case.tflite")
    assert outcome == INVOKE_FAILED, (outcome, message)
    return tally, message


@pytest.mark.parametrize("seed_name", FLATTEN_SEEDS)
def test_a_graph_write_to_the_reshape_size_is_counted_as_failed_at_invoke(seeds, tmp_path, seed_name) -> None:
    tally, message = _invoke_failure(seeds, tmp_path, seed_name, CONSTANT,
                                     lambda seed, value: value.form == "<i" and _value(seed, value) == FLAT, FLAT + 1)
    assert (tally.cases, tally.read, tally.invoke_failed, tally.ran, tally.failures) == (1, 1, 1, 0, [])
    assert re.fullmatch(rf".*case\.tflite: the \S+ interpreter cannot run this model \(num_input_elements != "
                        rf"num_output_elements \({FLAT} != {FLAT + 1}\) at node \d+ \(RESHAPE\)\)", message), message


def test_a_graph_write_to_a_zero_point_is_counted_as_failed_at_invoke(seeds, tmp_path) -> None:
    """The int8 Dense weights [classes, FLAT] are quantized per channel, one zero point per class: XNNPACK
    refuses any but 0 when it prepares the dynamic part of the graph, at the first invoke."""
    def dense_weights(seed: Seed, value: GraphValue) -> bool:
        tensor = value.where.split(" zero point")[0]
        return len([other for other in seed.graph[ZERO_POINT] if other.where.startswith(tensor + " ")]) == len(LABELS)

    tally, message = _invoke_failure(seeds, tmp_path, "ours-flatten-int8", ZERO_POINT, dense_weights, BAD_ZERO_POINT)
    assert (tally.cases, tally.read, tally.invoke_failed, tally.ran, tally.failures) == (1, 1, 1, 0, [])
    assert re.fullmatch(rf".*: the \S+ interpreter cannot run this model \(unsupported zero-point value "
                        rf"\({BAD_ZERO_POINT}\) in channel 0 of INT8 tensor \d+ in XNNPACK delegate at node \d+ "
                        r"\(TfLiteXNNPackDelegate\)\)", message), message


def test_a_case_that_kills_the_worker_is_a_crash_and_the_run_goes_on(seeds, tmp_path, monkeypatch) -> None:
    """A signal that kills the worker (as a crash in the interpreter's native code would) is counted as a
    crash of the case it was running, whose model the record keeps; a new worker runs the cases left."""
    save_seeds(seeds, tmp_path / "seeds")
    script = tmp_path / "crashing_worker.py"
    script.write_text(CRASHING_WORKER.format(root=str(REPO_ROOT), crash_at=CRASH_AT))
    figures, stopped = run_workers(tmp_path, CRASH_BUDGET, 3, 2.0, 0, script=str(script))
    assert stopped is None and figures is not None
    assert (figures["cases"], figures["crashes"], figures["tracebacks"], figures["hangs"]) == (CRASH_BUDGET, 1, 0, 0)
    assert figures["read"] + figures["refused"] == CRASH_BUDGET - 1
    crash = [failure for failure in figures["failures"] if failure["error"].startswith("crash")]
    assert [failure["error"] for failure in crash] == ["crash: the worker was killed by SIGSEGV"]
    # The record names the case and keeps its model (the first worker draws from the run's seed).
    drawn: list[Case] = []
    monkeypatch.setattr(fuzz_run, "try_model", lambda path: (fuzz_run.REFUSED, "not run"))
    run_cases(load_seeds(tmp_path / "seeds"), CRASH_BUDGET, 3, 2.0, tmp_path,
              progress=lambda index, case, tally: drawn.append(case))
    assert (crash[0]["seed"], crash[0]["steps"]) == (drawn[CRASH_AT].seed, list(drawn[CRASH_AT].steps))
    assert bytes.fromhex(crash[0]["data_hex"]) == drawn[CRASH_AT].data


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
        [sys.executable, "-c", "from benchmarks.fuzz.seeds import build_seeds; build_seeds()"],
        capture_output=True, text=True, timeout=300, cwd=REPO_ROOT, env=environment)
    assert completed.returncode == 0, completed.stderr
    noise = [line for line in (completed.stderr + completed.stdout).splitlines() if TENSORFLOW_LOG_LINE.search(line)]
    assert noise == []
