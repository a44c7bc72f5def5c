"""The parent process of `make fuzz`: it builds the seeds, runs the cases in a worker process (a new
one for the cases left after a case kills it), merges the workers' figures, prints the summary and
writes the record.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.fuzz.run import CASE_FILE, KEPT_FAILURES, PROGRESS_FILE, failure_record
from benchmarks.fuzz.seeds import build_seeds, save_seeds
from benchmarks.harness import cpu_model

# The script a worker process runs, with --worker.
WORKER_SCRIPT = str(Path(__file__).resolve().parent.parent / "fuzz_models.py")

# The worker is stopped (and the run counted as hung) when the whole run takes longer than this.
WORKER_SECONDS_PER_CASE = 0.5
WORKER_MIN_TIMEOUT_S = 120
# After a case kills its worker (a crash in native code), the parent starts another for the cases left, at
# most this many times a run.
MAX_WORKER_RESTARTS = 20


# Figures of two workers' runs that add up; the others are the largest of the two, or (final_rss_mib, which a
# worker that was killed does not have) the later.
SUMMED_FIGURES = ("cases", "read", "refused", "ran", "load_refused", "invoke_failed", "tracebacks", "multi_line",
                  "crashes", "hangs", "seconds")
LARGEST_FIGURES = (("max_case_seconds", "slowest_case"), ("max_case_rss_rise_mib", "hungriest_case"),
                   ("max_case_peak_rss_mib", None), ("baseline_rss_mib", None))


def merge_figures(total: dict[str, Any] | None, part: dict[str, Any]) -> dict[str, Any]:
    """The figures of a run made of `total` (None: nothing yet) and then `part`."""
    if total is None:
        return {**part, "failures": list(part["failures"])}
    merged = {**total, "final_rss_mib": part.get("final_rss_mib"), "failures": total["failures"] + part["failures"],
              "invoke_failures": (total["invoke_failures"] + part["invoke_failures"])[:KEPT_FAILURES]}
    for name in SUMMED_FIGURES:
        merged[name] = total[name] + part[name]
    for name, case in LARGEST_FIGURES:
        if part[name] > total[name]:
            merged[name] = part[name]
            if case is not None:
                merged[case] = part[case]
    return merged


def run_workers(folder: Path, cases: int, seed: int, time_cap_s: float, address_space_mib: int,
                script: str = WORKER_SCRIPT) -> tuple[dict[str, Any] | None, str | None]:
    """Run `cases` cases in a worker process (`script --worker`) with the seeds saved under `folder`
    (`save_seeds`); when a case kills it (a signal: a crash in native code, which no Python handler
    sees), count that case as a crash, keep its model, and start another worker for the cases left, which
    draws them from a seed of its own (replaying the cases before the crash would cost more than running
    them). Returns the figures of every case run (None when the first worker died before any case) and
    why the run stopped early (None when it did not)."""
    result_file, progress_file = folder / "result.json", folder / PROGRESS_FILE
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    total: dict[str, Any] | None = None
    done = 0
    for restart in range(MAX_WORKER_RESTARTS + 1):
        for stale in (result_file, progress_file):
            stale.unlink(missing_ok=True)
        command = [sys.executable, script, "--worker", "--seeds", str(folder / "seeds"), "--folder", str(folder),
                   "--result", str(result_file), "--cases", str(cases - done), "--seed", str(seed),
                   "--restart", str(restart), "--time-cap", str(time_cap_s),
                   "--address-space-mib", str(address_space_mib)]
        timeout = max(WORKER_MIN_TIMEOUT_S, (cases - done) * WORKER_SECONDS_PER_CASE)
        try:
            code: int | None = subprocess.run(command, timeout=timeout, env=environment).returncode
        except subprocess.TimeoutExpired:
            code = None
        if code == 0 and result_file.exists():
            return merge_figures(total, json.loads(result_file.read_text(encoding="utf-8"))), None
        try:
            state = json.loads(progress_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            how = f"hung (limit {timeout:.0f} s)" if code is None else f"failed (exit {code})"
            return total, f"the worker {how} before its first case"
        figures = state["figures"]
        if code is None:
            figures["hangs"] += 1
            what = f"hang: the worker was stopped after {timeout:.0f} s"
        elif code < 0:
            figures["crashes"] += 1
            what = f"crash: the worker was killed by {signal.Signals(-code).name}"
        else:
            figures["tracebacks"] += 1
            what = f"the worker exited with {code} (its own traceback above)"
        figures["cases"] += 1
        figures["failures"].append(failure_record(state["seed"], state["steps"], what,
                                                  (folder / CASE_FILE).read_bytes()))
        total = merge_figures(total, figures)
        if code is None or code > 0:
            return total, f"the worker stopped at case {done + state['index']} ({what})"
        done += state["index"] + 1
        if done >= cases:
            return total, None
    return total, f"more than {MAX_WORKER_RESTARTS} cases killed the worker: stopped at case {done}"


def parent(args: argparse.Namespace) -> int:
    from edge_runtime.atomic import write_text

    print("Building the seed models (TensorFlow)...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="fuzz-seeds-") as folder:
        seeds = build_seeds()
        save_seeds(seeds, Path(folder) / "seeds")
        print(f"Fuzzing {args.cases:,} cases (seed {args.seed}, {args.time_cap} s a case)...", file=sys.stderr,
              flush=True)
        result, stopped = run_workers(Path(folder), args.cases, args.seed, args.time_cap, args.address_space_mib)
        if result is None:
            print(f"make fuzz: {stopped}", file=sys.stderr)
            return 1
    rise = result["max_case_rss_rise_mib"]
    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([Path(sys.executable).name, "benchmarks/fuzz_models.py", *sys.argv[1:]]),
        "cpu": cpu_model(), "python": platform.python_version(),
        "seeds": [seed.name for seed in seeds], "hypothesis_seed": args.seed,
        "time_cap_s": args.time_cap, "memory_cap_mib": args.memory_cap_mib,
        "address_space_cap_mib": args.address_space_mib, **result,
    }
    lines = [
        f"cases:              {result['cases']:,} ({result['read']:,} read, {result['refused']:,} refused "
        "with one line)",
        f"interpreter:        of the {result['read']:,} read, {result['ran']:,} classified an image, "
        f"{result['load_refused']:,} were refused at load and {result['invoke_failed']:,} failed at invoke, "
        "each with one line",
        f"tracebacks:         {result['tracebacks']} (and {result['multi_line']} errors not on one line)",
        f"crashes:            {result['crashes']} (cases that killed the worker; it restarted after each)",
        f"hangs:              {result['hangs']} (cap {args.time_cap} s a case)",
        f"max time per case:  {result['max_case_seconds'] * 1000:.1f} ms ({' / '.join(result['slowest_case'])})",
        f"max memory:         a case added at most {rise:.1f} MiB resident (cap {args.memory_cap_mib} MiB; "
        f"{' / '.join(result['hungriest_case'])}); the worker peaked at {result['max_case_peak_rss_mib']:.1f} MiB "
        f"from {result['baseline_rss_mib']:.1f} MiB before the first case, its address space capped at "
        f"+{args.address_space_mib} MiB",
        f"total:              {result['seconds']:.0f} s",
    ]
    print("\n".join(lines))
    for failure in result["failures"]:
        print(f"FAILED {failure['seed']} {failure['steps']}:\n{failure['error']}", file=sys.stderr)
    if stopped:
        print(f"make fuzz: {stopped}", file=sys.stderr)
    if args.record:
        write_text(args.record, json.dumps(record, indent=2) + "\n")
        print(f"Wrote {args.record}", file=sys.stderr)
    failed = (result["tracebacks"] or result["multi_line"] or result["crashes"] or result["hangs"]
              or rise > args.memory_cap_mib or result["cases"] < args.cases)
    return 1 if failed else 0
