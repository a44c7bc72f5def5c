"""Running fuzz cases: each written to a file, read as every path that opens a model reads it and,
when the readers accept it, classified by the Classifier edge-classify builds, under a time cap; the
outcome, time and memory counted in a Tally. The worker process runs a budget of cases under an
address-space cap and writes its progress before each, so that the parent can name a case that kills it.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import os
import resource
import signal
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from benchmarks.fuzz.mutations import Case, mutated_models
from benchmarks.fuzz.seeds import Seed, load_seeds
from edge_runtime.classify import Classifier
from edge_runtime.errors import ModelError
from edge_runtime.info import describe_calibration
from edge_runtime.model_file.limits import MIB
from edge_runtime.model_file.metadata import read_metadata
from edge_runtime.model_file.official_metadata import read_official_metadata

KEPT_FAILURES = 5
KEPT_MODEL_BYTES = 64 * 1024  # a failed case's model is kept whole up to this size (the seeds are a few KiB)
KEPT_HEAD_BYTES = 64
PROGRESS_FILE = "progress.json"
CASE_FILE = "case.tflite"
# The image a mutant is classified on: one grey picture of the model's input size.
PROBE_PIXEL = 128
# What became of a case (`try_model`): the readers refused it, or they accepted it and then the
# interpreter refused to load it, loaded it but failed to run it, or ran it.
REFUSED, LOAD_REFUSED, INVOKE_FAILED, RAN = "refused", "refused at load", "failed at invoke", "ran"


def read_everything(path: Path) -> str:
    """What every path that opens a model reads from it, beside the interpreter: our metadata, the
    official metadata and its files, and the summary `--info` prints. Returns how it went."""
    ours = read_metadata(path)
    if ours is not None:
        describe_calibration(ours.info.get("calibration"))  # what --info makes of the embedded info
        json.dumps(ours.info)
    official = read_official_metadata(path.read_bytes(), str(path))
    if official is not None:
        json.dumps(official.summary())
    return "read" if ours is not None or official is not None else "no metadata"


def try_model(path: Path) -> tuple[str, str | None]:
    """Read a model as `read_everything` does; when the readers accept it, build the Classifier
    edge-classify builds and classify one image. Returns what became of it (REFUSED, LOAD_REFUSED,
    INVOKE_FAILED or RAN) and the ModelError's message (None when it ran); any other exception
    propagates: it is a traceback."""
    outcome = REFUSED
    try:
        read_everything(path)
        outcome = LOAD_REFUSED
        classifier = Classifier(path)
        outcome = INVOKE_FAILED
        classifier.scores(np.full((classifier.spec.height, classifier.spec.width, 3), PROBE_PIXEL, dtype=np.uint8))
    except ModelError as error:
        return outcome, str(error)
    return RAN, None


class CaseTimeout(Exception):
    """A case ran past its time cap."""


@dataclasses.dataclass
class Tally:
    """The figures of a run."""

    cases: int = 0
    read: int = 0  # accepted by the readers, then run, or refused by the interpreter in one line
    refused: int = 0  # refused by the readers in one line
    ran: int = 0  # of the read: classified an image
    load_refused: int = 0  # of the read: the interpreter would not load it
    invoke_failed: int = 0  # of the read: it loaded, and failed when invoked
    tracebacks: int = 0
    multi_line: int = 0  # a ModelError of more than one line (or none): counted as read or refused, and a failure
    crashes: int = 0  # cases that killed their worker (a signal from native code): counted by the parent
    hangs: int = 0
    max_case_seconds: float = 0.0
    slowest_case: list[str] = dataclasses.field(default_factory=list)
    max_case_rss_rise_mib: float = 0.0  # the most resident memory one case added while it ran
    max_case_peak_rss_mib: float = 0.0  # the worker's highest resident memory during a case
    hungriest_case: list[str] = dataclasses.field(default_factory=list)
    failures: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    invoke_failures: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # the first few, as examples

    def record(self, case: Case, path: Path, time_cap_s: float) -> None:
        def expire(signum: int, frame: Any) -> None:
            raise CaseTimeout(f"over {time_cap_s} s")

        path.write_bytes(case.data)
        previous = signal.signal(signal.SIGALRM, expire)
        resident_before = reset_peak_rss()
        start = time.perf_counter()
        signal.setitimer(signal.ITIMER_REAL, time_cap_s)
        try:
            outcome, message = try_model(path)
            if message is not None and ("\n" in message or not message):
                self.multi_line += 1
                self._fail(case, f"ModelError ({outcome}) not on one line: " + repr(message))
            if outcome == REFUSED:
                self.refused += 1
            else:
                self.read += 1
                if outcome == RAN:
                    self.ran += 1
                elif outcome == LOAD_REFUSED:
                    self.load_refused += 1
                else:
                    self.invoke_failed += 1
                    if len(self.invoke_failures) < KEPT_FAILURES:
                        self.invoke_failures.append({"seed": case.seed, "steps": list(case.steps), "error": message})
        except CaseTimeout:
            self.hangs += 1
            self._fail(case, "hang")
        except BaseException as error:  # noqa: BLE001 - counting them is the point
            if isinstance(error, KeyboardInterrupt):
                raise
            self.tracebacks += 1
            self._fail(case, traceback.format_exc())
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        seconds = time.perf_counter() - start
        if seconds > self.max_case_seconds:
            self.max_case_seconds, self.slowest_case = seconds, [case.seed, *case.steps]
        if resident_before is not None:
            peak = memory_status("VmHWM")
            self.max_case_peak_rss_mib = max(self.max_case_peak_rss_mib, peak / MIB)
            rise = max(peak - resident_before, 0) / MIB
            if rise > self.max_case_rss_rise_mib:
                self.max_case_rss_rise_mib, self.hungriest_case = rise, [case.seed, *case.steps]
        self.cases += 1

    def _fail(self, case: Case, what: str) -> None:
        if len(self.failures) < KEPT_FAILURES:
            self.failures.append(failure_record(case.seed, case.steps, what, case.data))


def failure_record(seed: str, steps: Any, what: str, data: bytes) -> dict[str, Any]:
    """A failed case as the record keeps it: the whole model file (hex) where it is small enough to
    replay the case from, else its first bytes."""
    kept = data if len(data) <= KEPT_MODEL_BYTES else data[:KEPT_HEAD_BYTES]
    return {"seed": seed, "steps": list(steps), "error": what, "bytes": len(data),
            "data_hex" if kept is data else "data_hex_head": kept.hex()}


def peak_rss_mib() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_status(field: str) -> int:
    """A memory figure of this process from /proc/self/status, in bytes (VmSize, VmRSS, VmHWM); 0 where
    there is none."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def reset_peak_rss() -> int | None:
    """Reset this process's peak resident memory (VmHWM) to its current one, which is returned;
    None where Linux's /proc/self/clear_refs is missing (then only the run's peak is known)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return None
    return memory_status("VmRSS")


def run_cases(seeds: list[Seed], cases: int, seed: int | str, time_cap_s: float, folder: Path,
              progress: Callable[[int, Case, Tally], None] | None = None, graph_writes: bool = True) -> Tally:
    """Run `cases` hypothesis-drawn cases through `try_model`; never raises for a case. `progress` is told
    of each case (its number from 0, the case, the figures so far) before it runs."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    tally = Tally()
    path = folder / CASE_FILE
    drawn = 0

    @hypothesis_seed(seed)
    @settings(max_examples=cases, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(mutated_models(seeds, graph_writes))
    def fuzz(case: Case) -> None:
        nonlocal drawn
        if progress is not None:
            progress(drawn, case, tally)
        drawn += 1
        tally.record(case, path, time_cap_s)

    fuzz()
    return tally


def worker(args: argparse.Namespace) -> int:
    """Run the cases; before each, write it and the figures so far to PROGRESS_FILE in `args.folder`
    (where its model is CASE_FILE), so that the parent can name a case that kills this process and go
    on without it. The worker started after the r-th such case draws from the seed "SEED restart r"."""
    faulthandler.enable()  # a crash in native code prints where the case was (load or invoke) before it kills us
    seeds = load_seeds(Path(args.seeds))
    with tempfile.TemporaryDirectory(prefix="fuzz-case-") as scratch:
        folder = Path(args.folder) if args.folder else Path(scratch)
        # Warm-up: imports, caches. Without graph writes, which may crash the interpreter before there is a
        # case in progress to blame.
        run_cases(seeds, 20, args.seed + 1, args.time_cap, Path(scratch), graph_writes=False)
        for seed in seeds:  # and the interpreter's, whatever those cases drew: before the address-space cap
            (Path(scratch) / "seed.tflite").write_bytes(seed.data)
            try_model(Path(scratch) / "seed.tflite")
        baseline_rss = memory_status("VmRSS") / MIB
        if args.address_space_mib:
            limit = memory_status("VmSize") + args.address_space_mib * MIB
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        started = time.perf_counter()

        def figures(tally: Tally) -> dict[str, Any]:
            return {**dataclasses.asdict(tally), "seconds": round(time.perf_counter() - started, 1),
                    "baseline_rss_mib": round(baseline_rss, 1)}

        # One file kept open and rewritten in place: a write per case costs microseconds, not an open and close.
        with open(folder / PROGRESS_FILE, "wb") as progress_file:
            def progress(index: int, case: Case, tally: Tally) -> None:
                state = {"index": index, "seed": case.seed, "steps": list(case.steps), "figures": figures(tally)}
                text = json.dumps(state).encode("utf-8")
                os.pwrite(progress_file.fileno(), text, 0)
                os.ftruncate(progress_file.fileno(), len(text))

            hypothesis_seed = f"{args.seed} restart {args.restart}" if args.restart else args.seed
            tally = run_cases(seeds, args.cases, hypothesis_seed, args.time_cap, folder, progress)
    if not tally.max_case_peak_rss_mib:  # no /proc/self/clear_refs: only the process's peak is known
        tally.max_case_peak_rss_mib = peak_rss_mib()
        tally.max_case_rss_rise_mib = max(peak_rss_mib() - baseline_rss, 0.0)
    result = {**figures(tally), "final_rss_mib": round(memory_status("VmRSS") / MIB, 1)}
    Path(args.result).write_text(json.dumps(result), encoding="utf-8")
    return 0
