"""What the check reports: OUT/arm64-check.json (the host, the timings, every run's record, x86's
benchmark, the notes) and the summary a person reads at the end of the run."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Sequence

import click

from edge_runtime.atomic import write_text

from .answers import ModelAnswers
from .host import host_cpu_model, qemu_version
from .parity import EMULATED_TIMING_NOTE, RunOutcome, benchmark_line, summary_lines

REPORT_NAME = "arm64-check.json"


def check_report(ok: bool, image_source: str, models: list[Path], wheel: Path, cache: Path, timings: dict[str, Any],
                 outcomes: Sequence[RunOutcome], references: dict[str, dict[str, ModelAnswers]],
                 notes: list[str]) -> dict[str, Any]:
    """The content of arm64-check.json."""
    return {
        "ok": ok,
        "host": {"machine": platform.machine(), "cpu": host_cpu_model(), "cores": os.cpu_count(),
                 "qemu": qemu_version(), "python": platform.python_version()},
        "images": image_source,
        "models": [model.name for model in models],
        "wheel": wheel.name,
        "cache": str(cache),
        "timings": timings,
        "timing_note": f"benchmark figures are {EMULATED_TIMING_NOTE}; seconds are wall time of the emulated runs, "
                       "both distros in parallel",
        "runs": [outcome.record() for outcome in outcomes],
        "x86_benchmark": {backend: {name: answers.benchmark for name, answers in by_model.items()}
                          for backend, by_model in references.items()},
        "notes": notes,
    }


def write_report(out: Path, report: dict[str, Any]) -> Path:
    """Write OUT/arm64-check.json; its path."""
    report_path = out / REPORT_NAME
    write_text(report_path, json.dumps(report, indent=2) + "\n")
    return report_path


def print_summary(report: dict[str, Any], report_path: Path, format_files: int,
                  outcomes: Sequence[RunOutcome]) -> None:
    """What was classified, the table of runs with every mismatch and note, the emulated timings and the host."""
    timings = report["timings"]
    click.echo(f"arm64-check: {report['images']} plus {format_files} format files; "
               f"models {', '.join(report['models'])}")
    click.echo("\n".join(summary_lines(outcomes, report["notes"])))
    for outcome in outcomes:
        for line in benchmark_line(outcome):
            click.echo(line)
    click.echo(f"arm64-check: host {report['host']['cpu']} ({report['host']['cores']} cores), "
               f"{report['host']['qemu']}; rootfs {timings['rootfs']}; total {timings['total s']:.0f} s")
    click.echo(f"arm64-check: wrote {report_path}")
