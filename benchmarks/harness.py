"""What the benchmark scripts share: the repository's paths, fresh processes run and measured (wall
and CPU time, peak memory) in the environment a user has and in turns, the test files picked and
linked into a folder, the targets checked and the run finished (`finish`), and the processor's name
the figures are recorded with.

The scripts import it as `harness` (run from benchmarks/, their folder is on the path); the fuzzer's
package as `benchmarks.harness`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import click

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO_ROOT / "benchmarks"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"
USER_ENV_DROP = ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME")
# The console script pip writes for `edge-classify`, for a checkout that is not installed.
CONSOLE_SCRIPT = "import sys; from edge_runtime.cli import main; sys.exit(main())"
KIB = 1024.0


def user_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in USER_ENV_DROP}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


@dataclasses.dataclass(frozen=True)
class ProcessRun:
    """One finished process: wall seconds, CPU seconds and peak resident memory in MiB."""

    wall_s: float
    cpu_s: float
    peak_mib: float
    stdout: str


def run_process(command: list[str], env: dict[str, str], stdout_path: Path | None = None) -> ProcessRun:
    """Run to completion; peak RSS and CPU come from wait4 for this one child."""
    with tempfile.TemporaryFile("w+") as captured:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=captured, stderr=subprocess.PIPE,
                                   text=True)
        stderr = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        captured.seek(0)
        stdout = captured.read()
    if process.returncode != 0:
        raise click.ClickException(f"{' '.join(command)} failed ({process.returncode}): {stderr.strip()[-500:]}")
    return ProcessRun(wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, peak_mib=usage.ru_maxrss / KIB,
                      stdout=stdout)


def alternate(commands: dict[str, Callable[[], ProcessRun]], repeats: int) -> dict[str, list[ProcessRun]]:
    """Run each command once untimed, then `repeats` rounds taking turns (noise hits all alike)."""
    for command in commands.values():
        command()
    runs: dict[str, list[ProcessRun]] = {name: [] for name in commands}
    for _ in range(repeats):
        for name, command in commands.items():
            runs[name].append(command())
    return runs


def median(values) -> float:
    return float(statistics.median(values))


def warm_page_cache(paths: list[Path]) -> None:
    for path in paths:
        path.read_bytes()


def link_files(files: list[Path], folder: Path) -> None:
    """A folder of symbolic links to `files`, each in a sub-folder named as its own (its class)."""
    for path in files:
        target = folder / path.parent.name / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(path)


def spread(files: list[Path], limit: int | None) -> list[Path]:
    """`limit` of the sorted files, evenly spaced so every class is in (all of them without a limit)."""
    if limit is None or limit >= len(files):
        return files
    step = len(files) / limit
    return [files[int(index * step)] for index in range(limit)]


@dataclasses.dataclass(frozen=True)
class Check:
    """One target: what was measured, the bound, and whether it holds."""

    name: str
    value: float
    target: str
    passed: bool


def finish(summary: dict[str, Any], evaluate_targets: Callable[[dict[str, Any]], list[Check]],
           print_figures: Callable[[dict[str, Any], list[Check]], None], json_path: Path | None) -> None:
    """Check the targets, print the figures, the load and the targets, write the JSON file if asked, and
    exit 0 when every target holds, else 1."""
    summary["machine"]["load_average_after"] = list(os.getloadavg())
    checks = evaluate_targets(summary)
    summary["targets"] = [dataclasses.asdict(check) for check in checks]
    print_figures(summary, checks)
    load = summary["machine"]
    click.echo(f"load average before {load['load_average'][0]:.2f}, after {load['load_average_after'][0]:.2f}")
    click.echo("targets:")
    for check in checks:
        click.echo(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}: {check.value} (target {check.target})")
    if json_path is not None:
        from edge_runtime.atomic import write_text

        write_text(json_path, json.dumps(summary, indent=2) + "\n")
    sys.exit(0 if all(check.passed for check in checks) else 1)


def cpu_model() -> str:
    """The processor's model name as Linux reports it (figures are recorded with it)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"
