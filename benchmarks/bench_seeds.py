"""The spread of the default recipe over seeds: last epoch vs kept epoch, and the CI floors per seed.

For each seed, in its own subprocesses and one after the other, it runs what `make train convert
report` runs: `edge-train` (default recipe, `--keep best`), `edge-convert` and `edge-report`. It then
records the test accuracy of the last epoch and of the kept epoch (both in training.json), the int8
figures the CI floors check, and whether every floor of `.ci/check_floors.py` holds for that seed.
It prints a table with the mean and range, and the CPU model the figures came from.

    python benchmarks/bench_seeds.py --seeds 0,1,2 --work bench-out/seeds --json bench-out/seeds.json
    python benchmarks/bench_seeds.py --seeds 0,1 --epochs 2 --limit 100   # a quick check on a subset

A seed whose folder under --work already holds a finished report (from an earlier, interrupted
benchmark) is read, not trained again; say --fresh to retrain it. Exit status 0 when every seed
meets every floor, 1 otherwise or when a run fails, 2 for bad options.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from bench_train import (DEFAULT_DATA, RECIPE_EPOCHS, echo, load_floors, machine, make_subset, run_streaming,
                         write_result)


def run_checked(command: list[str], env: dict[str, str], what: str) -> float:
    code, _, wall = run_streaming(command, env)
    if code != 0:
        raise click.ClickException(f"{what} failed (exit status {code})")
    return wall


def run_seed(data: Path, seed: int, epochs: int, out: Path, env: dict[str, str], fresh: bool) -> dict[str, Any]:
    """Train, convert and report one seed into `out` (or read a finished earlier run); its figures."""
    python = sys.executable
    walls: dict[str, float] = {}
    if fresh or not (out / "report.json").is_file():
        walls["train"] = run_checked([python, "-m", "trainer.cli", "--data", str(data), "--out", str(out),
                                      "--epochs", str(epochs), "--seed", str(seed), "--force"], env, "edge-train")
        walls["convert"] = run_checked([python, "-m", "converter.cli", "--model", str(out / "model.keras"),
                                        "--out", str(out), "--data", str(data)], env, "edge-convert")
        walls["report"] = run_checked([python, "-m", "converter.cli", "report", "--out", str(out),
                                       "--data", str(data)], env, "edge-report")
    else:
        echo(f"seed {seed}: reading the finished run in {out}")
    training = json.loads((out / "training.json").read_text(encoding="utf-8"))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    formats = {entry["name"]: entry for entry in report["formats"]}
    floors = load_floors().checks(out)
    return {
        "seed": seed,
        "last_epoch_test_accuracy": training["test_last_epoch"]["accuracy"],
        "kept_test_accuracy": training["test"]["accuracy"],
        "kept_epoch": training["kept"]["epoch"],
        "kept_val_accuracy": training["kept"]["val_accuracy"],
        "last_val_accuracy": training["history"]["val_accuracy"][-1],
        "epochs": training["epochs"],
        "int8_agreement": formats["int8"]["agreement"],
        "int8_change_pp": formats["int8"]["accuracy_change_pp"],
        "float32_agreement": formats["float32"]["agreement"],
        "training_seconds": training["durations"]["training_seconds"],
        "walls": walls,
        "floors": [{"name": name, "value": value, "relation": relation, "limit": limit, "passed": ok}
                   for name, value, relation, limit, ok in floors],
        "floors_passed": all(ok for *_, ok in floors),
    }


def spread(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
            "range": max(values) - min(values)}


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table: one row per seed, then mean and range."""
    lines = ["| seed | test acc., last epoch | test acc., kept epoch (which) | val acc. kept / last | "
             "int8 agreement | int8 change | floors |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        lines.append(f"| {row['seed']} | {row['last_epoch_test_accuracy']:.4f} | {row['kept_test_accuracy']:.4f} "
                     f"({row['kept_epoch']}) | {row['kept_val_accuracy']:.4f} / {row['last_val_accuracy']:.4f} | "
                     f"{row['int8_agreement']:.2%} | {row['int8_change_pp']:+.2f} pp | "
                     f"{'all met' if row['floors_passed'] else 'MISSED'} |")
    last = spread([row["last_epoch_test_accuracy"] for row in rows])
    kept = spread([row["kept_test_accuracy"] for row in rows])
    agreement = spread([row["int8_agreement"] for row in rows])
    lines.append(f"| mean | {last['mean']:.4f} | {kept['mean']:.4f} | | {agreement['mean']:.2%} | | |")
    lines.append(f"| range | {last['min']:.4f}-{last['max']:.4f} ({last['range'] * 100:.1f} pts) | "
                 f"{kept['min']:.4f}-{kept['max']:.4f} ({kept['range'] * 100:.1f} pts) | | "
                 f"{agreement['min']:.2%}-{agreement['max']:.2%} | | |")
    return "\n".join(lines)


def parse_seeds(ctx: click.Context, param: click.Parameter, value: str) -> list[int]:
    try:
        seeds = [int(part) for part in value.split(",") if part.strip()]
    except ValueError as error:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of integers") from error
    if not seeds or len(set(seeds)) != len(seeds):
        raise click.BadParameter("give one or more different seeds, e.g. 0,1,2")
    return seeds


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help=f"Image folders with train/ and test/.  [default: {DEFAULT_DATA}]")
@click.option("--seeds", default="0,1,2", show_default=True, callback=parse_seeds, help="Seeds, comma-separated.")
@click.option("--epochs", type=click.IntRange(min=1), default=RECIPE_EPOCHS, show_default=True)
@click.option("--limit", type=click.IntRange(min=2), default=None,
              help="Use only this many training images per class (and a fifth as many test images).")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep each seed's outputs in WORK/seed-N (and reuse finished ones) instead of a temporary folder.")
@click.option("--fresh", is_flag=True, help="Retrain seeds whose folder under --work already holds a finished run.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result as JSON here.")
def main(data: Path | None, seeds: list[int], epochs: int, limit: int | None, work: Path | None, fresh: bool,
         json_path: Path | None) -> None:
    """Train, convert and report the default recipe for several seeds; last vs kept epoch, floors per seed."""
    data = data if data is not None else DEFAULT_DATA
    if not (data / "train").is_dir() or not (data / "test").is_dir():
        raise click.BadParameter(f"{data} has no train/ and test/ folders", param_hint="--data")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-seeds-") as scratch:
        source = make_subset(data, limit, Path(scratch) / "subset") if limit else data
        base = work if work is not None else Path(scratch) / "runs"
        for seed in seeds:
            rows.append(run_seed(source, seed, epochs, base / f"seed-{seed}", env, fresh))
            echo(f"seed {seed}: last epoch {rows[-1]['last_epoch_test_accuracy']:.4f}, kept epoch "
                 f"{rows[-1]['kept_epoch']} {rows[-1]['kept_test_accuracy']:.4f}")
    host = machine()
    click.echo(f"CPU: {host['cpu']} ({host['cpus']} cores), Python {host['python']}, "
               f"TensorFlow {host['tensorflow']}; data {data}{f' (limit {limit})' if limit else ''}, {epochs} epochs")
    click.echo(table(rows))
    missed = [row["seed"] for row in rows if not row["floors_passed"]]
    click.echo("floors: " + (f"missed for seed(s) {', '.join(map(str, missed))}" if missed
                             else "every floor of .ci/check_floors.py met for every seed"))
    if json_path is not None:
        result = {"date": started, "command": " ".join([Path(sys.executable).name, *sys.argv]), "machine": host,
                  "data": str(data), "epochs": epochs, "limit": limit, "seeds": rows,
                  "last_epoch": spread([row["last_epoch_test_accuracy"] for row in rows]),
                  "kept_epoch": spread([row["kept_test_accuracy"] for row in rows])}
        write_result(json_path, result)
    if missed:
        sys.exit(1)


if __name__ == "__main__":
    main()
