"""Benchmark one network end to end: `make train convert report ARCH=...` as three timed processes.

Prints the accuracy of every epoch (training and validation) with its wall time, the kept epoch's
test accuracy, the float32 and int8 sizes, the int8 accuracy and agreement from the report, and
each step's wall time and peak resident memory (the process's own maximum RSS, from the kernel).
The issue's parity gates are checked on every run: float32 agrees with Keras on every test image,
int8 loses at most 0.5 points; `--target` adds a floor on int8 test accuracy. A quick check on a
subset (`--limit`, `--classes`) reports the gates but never fails on them.

    python benchmarks/bench_arch.py --arch resnet8 --target 0.85 --json resnet8.json
    python benchmarks/bench_arch.py --arch cnn --augment --json cnn-augment.json
    python benchmarks/bench_arch.py --arch mobilenetv2 --classes 5 --limit 500
    python benchmarks/bench_arch.py --arch resnet8 --limit 20 --epochs 1        # a quick check

Any option after `--` goes to edge-train as it is (e.g. `-- --validation-fraction 0.1`).
Exit status 0 when the gates and the target are met (or not checked), 1 when one is missed or a
step fails, 2 for bad options.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from bench_train import DEFAULT_DATA, REPO_ROOT, echo, machine

SPLITS = ("train", "test")
# A subset keeps this share of each class's test images relative to --limit (CIFAR-10's own 1:5).
TEST_SHARE_OF_LIMIT = 0.2
MAX_INT8_DROP_PP = 0.5  # the parity gate: int8 within 0.5 points of Keras
FLOAT32_AGREEMENT = 1.0  # and float32 agreeing with Keras on every test image
EPOCH_LINE = re.compile(r"^epoch (\d+)/(\d+)\s.*\(([\d.]+) s\)$")
KIB = 1024


def make_subset(data: Path, limit: int | None, classes: int | None, folder: Path) -> Path:
    """A copy of `data` made of symbolic links: the first `classes` class folders (all by default), the first
    `limit` training images of each (all by default) and `limit * TEST_SHARE_OF_LIMIT` (at least 1) test images."""
    per_split = {"train": limit, "test": None if limit is None else max(1, int(limit * TEST_SHARE_OF_LIMIT))}
    for split in SPLITS:
        class_folders = sorted(p for p in (data / split).iterdir() if p.is_dir())
        for class_folder in class_folders[:classes]:
            target = folder / split / class_folder.name
            target.mkdir(parents=True)
            for file in sorted(p for p in class_folder.iterdir() if p.is_file())[:per_split[split]]:
                (target / file.name).symlink_to(file.resolve())
    return folder


def run_step(name: str, command: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run one step, echoing its output to stderr as it comes; its output lines, wall time and peak RSS."""
    echo("$ " + " ".join(command))
    started = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            echo("  " + lines[-1])
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise click.ClickException(f"{name} failed (exit status {process.returncode})")
    # ru_maxrss is in KiB on Linux.
    return {"wall_seconds": round(wall, 1), "peak_rss_mib": round(usage.ru_maxrss / KIB, 1), "output": lines}


def epoch_rows(history: dict[str, list[float]], output: list[str]) -> list[dict[str, Any]]:
    """One row per epoch: accuracies and losses from training.json, wall time from edge-train's epoch lines."""
    seconds = {int(match.group(1)): float(match.group(3)) for match in map(EPOCH_LINE.match, output) if match}
    rows = []
    for index in range(len(history.get("loss", []))):
        row = {"epoch": index + 1, "seconds": seconds.get(index + 1)}
        for key in ("accuracy", "val_accuracy", "loss", "val_loss"):
            values = history.get(key, [])
            row[key] = values[index] if index < len(values) else None
        rows.append(row)
    return rows


def gate_failures(report: dict[str, Any], target: float | None) -> list[str]:
    """The parity gates and the int8 accuracy target, one sentence per miss."""
    formats = {result["name"]: result for result in report["formats"]}
    failures = []
    if formats["float32"]["agreement"] < FLOAT32_AGREEMENT:
        failures.append(f"float32 agrees with Keras on {formats['float32']['agreement']:.2%} of test images, not all")
    drop = -formats["int8"]["accuracy_change_pp"]
    if drop > MAX_INT8_DROP_PP:
        failures.append(f"int8 loses {drop:.2f} points against Keras, more than {MAX_INT8_DROP_PP}")
    if target is not None and formats["int8"]["accuracy"] < target:
        failures.append(f"int8 test accuracy {formats['int8']['accuracy']:.4f} is below the target {target}")
    return failures


def _cell(value: Any, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def summary(arch: str, rows: list[dict[str, Any]], training: dict[str, Any], report: dict[str, Any],
            steps: dict[str, dict[str, Any]]) -> str:
    """The printed result: epochs, then the test accuracies, sizes and steps."""
    lines = ["epoch  seconds  accuracy  val_accuracy  loss    val_loss"]
    for row in rows:
        lines.append(f"{row['epoch']:>5}  {_cell(row['seconds'], 1):>7}  {_cell(row['accuracy']):>8}  "
                     f"{_cell(row['val_accuracy']):>12}  {_cell(row['loss']):>6}  {_cell(row['val_loss']):>8}")
    formats = {result["name"]: result for result in report["formats"]}
    kept = training["kept"]
    lines += ["",
              f"{arch}: {training['model']['parameters']:,} parameters, {training['data']['train']:,} training / "
              f"{training['data']['validation']:,} validation / {training['data']['test']:,} test images",
              f"kept epoch {kept['epoch']} of {training['epochs']}: Keras test accuracy {training['test']['accuracy']:.4f}"
              f" (last epoch {training['test_last_epoch']['accuracy']:.4f})",
              f"training {training['durations']['training_seconds'] / 60:.1f} min",
              f"float32 {formats['float32']['size_bytes'] / KIB:.1f} KiB, accuracy {formats['float32']['accuracy']:.4f}, "
              f"agreement {formats['float32']['agreement']:.2%}",
              f"int8    {formats['int8']['size_bytes'] / KIB:.1f} KiB, accuracy {formats['int8']['accuracy']:.4f} "
              f"({formats['int8']['accuracy_change_pp']:+.2f} pp), agreement {formats['int8']['agreement']:.2%}",
              ""]
    for name, step in steps.items():
        lines.append(f"{name:8s} wall {step['wall_seconds']:8.1f} s   peak RSS {step['peak_rss_mib']:8.1f} MiB")
    return "\n".join(lines)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--arch", default="resnet8", show_default=True, help="The network (edge-train --arch).")
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help=f"Image folders with train/ and test/.  [default: {DEFAULT_DATA}]")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="[default: the arch's]")
@click.option("--limit", type=click.IntRange(min=2), default=None,
              help="Use only this many training images per class (and a fifth as many test images).")
@click.option("--classes", type=click.IntRange(min=2), default=None, help="Use only the first N classes.")
@click.option("--augment/--no-augment", default=None, help="[default: the arch's]")
@click.option("--image-size", type=click.IntRange(min=1), default=None, help="[default: the arch's]")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="[default: the arch's]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--target", type=click.FloatRange(0, 1), default=None,
              help="Fail when int8 test accuracy is below this (e.g. 0.85 for resnet8, MLPerf Tiny's target).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result as JSON here.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep the artifacts here instead of a temporary folder (an earlier run there is replaced).")
@click.argument("train_args", nargs=-1, type=click.UNPROCESSED)
def main(arch: str, data: Path | None, epochs: int | None, limit: int | None, classes: int | None,
         augment: bool | None, image_size: int | None, batch_size: int | None, seed: int, target: float | None,
         json_path: Path | None, work: Path | None, train_args: tuple[str, ...]) -> None:
    """Train, convert and report one network; print per-epoch accuracy, time, sizes, int8 accuracy and memory."""
    data = data if data is not None else DEFAULT_DATA
    if not (data / "train").is_dir() or not (data / "test").is_dir():
        raise click.BadParameter(f"{data} has no train/ and test/ folders", param_hint="--data")
    quick = limit is not None or classes is not None
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    train_command = [sys.executable, "-m", "trainer.cli", "--arch", arch, "--seed", str(seed), "--force"]
    for flag, value in (("--epochs", epochs), ("--image-size", image_size), ("--batch-size", batch_size)):
        if value is not None:
            train_command += [flag, str(value)]
    if augment is not None:
        train_command.append("--augment" if augment else "--no-augment")
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    with tempfile.TemporaryDirectory(prefix="bench-arch-") as scratch:
        source = make_subset(data, limit, classes, Path(scratch) / "subset") if quick else data
        out = work if work is not None else Path(scratch) / "out"
        steps = {
            "train": run_step("edge-train", [*train_command, "--data", str(source), "--out", str(out), *train_args],
                              env),
            "convert": run_step("edge-convert", [sys.executable, "-m", "converter.cli", "--model",
                                                 str(out / "model.keras")], env),
            "report": run_step("edge-report", [sys.executable, "-m", "converter.cli", "report", "--out", str(out)],
                               env),
        }
        training = json.loads((out / "training.json").read_text(encoding="utf-8"))
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    rows = epoch_rows(training["history"], steps["train"]["output"])
    click.echo(summary(arch, rows, training, report, steps))
    failures = gate_failures(report, target)
    click.echo("gates: " + ("; ".join(failures) if failures else
                            f"met (float32 agreement 100%, int8 within {MAX_INT8_DROP_PP} points"
                            + (f", int8 accuracy >= {target})" if target is not None else ")")))
    if quick and failures:
        click.echo("(a subset run: the gates are reported, not enforced)")

    if json_path is not None:
        formats = {result["name"]: result for result in report["formats"]}
        result = {"date": started, "command": " ".join([Path(sys.executable).name, *sys.argv]),
                  "machine": machine(), "data": str(data), "arch": arch, "limit": limit, "classes": classes,
                  "seed": seed, "arch_settings": training["arch"]["settings"], "epochs": rows,
                  "parameters": training["model"]["parameters"], "kept": training["kept"],
                  "keras_test_accuracy": training["test"]["accuracy"],
                  "training_seconds": training["durations"]["training_seconds"],
                  "float32": {key: formats["float32"][key] for key in ("size_bytes", "accuracy", "agreement")},
                  "int8": {key: formats["int8"][key] for key in ("size_bytes", "accuracy", "agreement",
                                                                 "accuracy_change_pp")},
                  "steps": {name: {key: step[key] for key in ("wall_seconds", "peak_rss_mib")}
                            for name, step in steps.items()},
                  "target": target, "passed": not failures, "failures": failures}
        sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere: the toolkit is not installed
        from edge_runtime.atomic import write_text

        write_text(json_path, json.dumps(result, indent=2) + "\n")
    if failures and not quick:
        sys.exit(1)


if __name__ == "__main__":
    main()
