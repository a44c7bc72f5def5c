"""Benchmark edge-train against the documented recipe run as a plain script, in one run, on the same data.

Runs `benchmarks/plain_recipe.py` and then `edge-train` (`python -m trainer.cli`), each in its own
subprocess, one after the other, and prints their training wall time (model.fit only: loading,
evaluation and writing outputs are not counted), test accuracy and the ratio edge-train / plain.

    python benchmarks/bench_train.py [--data ../shared/datasets/cifar10-jpeg] [--epochs 15] [--json result.json]
    python benchmarks/bench_train.py --epochs 1 --limit 200      # a quick check on a subset

edge-train keeps its best validation epoch; its last epoch's test accuracy (also in training.json)
is the one to compare with the plain script, which ends on its last epoch. With the full recipe
(15 epochs, all images) the targets are checked: edge-train's kept-epoch test accuracy at least the
CI floor (.ci/check_floors.py) and its training time at most 1.1x the plain script's. Exit status 0 when they are met
(or not checked), 1 when one is missed or a run fails, 2 for bad options.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"
PLAIN_SCRIPT = REPO_ROOT / "benchmarks" / "plain_recipe.py"
RECIPE_EPOCHS = 15
DEFAULT_SEED = 0
FLOORS_SCRIPT = REPO_ROOT / ".ci" / "check_floors.py"
MAX_TIME_RATIO = 1.1
# A subset keeps this share of each class's test images relative to --limit (CIFAR-10's own 1:5).
TEST_SHARE_OF_LIMIT = 0.2
SPLITS = ("train", "test")


def load_floors() -> Any:
    """The CI floor module, loaded from its file (it is a script, not part of the package)."""
    spec = importlib.util.spec_from_file_location("check_floors", FLOORS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def write_result(path: Path, result: dict[str, Any]) -> None:
    """Write a benchmark's result as JSON, atomically (run as a script: the toolkit is not installed)."""
    sys.path.insert(0, str(REPO_ROOT))
    from edge_runtime.atomic import write_text

    write_text(path, json.dumps(result, indent=2) + "\n")


def echo(message: str) -> None:
    click.echo(message, err=True)


def make_subset(data: Path, limit: int, folder: Path) -> Path:
    """A copy of `data` made of symbolic links: the first `limit` training images of each class
    and `limit * TEST_SHARE_OF_LIMIT` (at least 1) test images."""
    per_split = {"train": limit, "test": max(1, int(limit * TEST_SHARE_OF_LIMIT))}
    for split in SPLITS:
        for class_folder in sorted(p for p in (data / split).iterdir() if p.is_dir()):
            target = folder / split / class_folder.name
            target.mkdir(parents=True)
            for file in sorted(p for p in class_folder.iterdir() if p.is_file())[:per_split[split]]:
                (target / file.name).symlink_to(file.resolve())
    return folder


def run_streaming(command: list[str], env: dict[str, str]) -> tuple[int, list[str], float]:
    """Run `command`, echoing its stdout lines to stderr as they come; (exit code, stdout lines, seconds)."""
    echo("$ " + " ".join(command))
    started = time.perf_counter()
    lines: list[str] = []
    with subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True) as process:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            echo("  " + lines[-1])
        code = process.wait()
    return code, lines, time.perf_counter() - started


def run_plain(data: Path, epochs: int, seed: int, env: dict[str, str]) -> dict[str, Any]:
    code, lines, wall = run_streaming([sys.executable, str(PLAIN_SCRIPT), str(data), str(epochs), str(seed)], env)
    if code != 0 or not lines:
        raise click.ClickException(f"the plain recipe failed (exit status {code})")
    result = json.loads(lines[-1])
    result["wall_seconds"] = wall
    return result


def run_edge_train(data: Path, epochs: int, seed: int, out: Path, env: dict[str, str]) -> dict[str, Any]:
    command = [sys.executable, "-m", "trainer.cli", "--data", str(data), "--out", str(out),
               "--epochs", str(epochs), "--seed", str(seed), "--force"]
    code, _, wall = run_streaming(command, env)
    if code != 0:
        raise click.ClickException(f"edge-train failed (exit status {code})")
    report = json.loads((out / "training.json").read_text(encoding="utf-8"))
    return {"test_accuracy": report["test"]["accuracy"], "test_loss": report["test"]["loss"],
            "last_epoch_test_accuracy": report["test_last_epoch"]["accuracy"], "kept_epoch": report["kept"]["epoch"],
            "training_seconds": report["durations"]["training_seconds"],
            "loading_seconds": report["durations"]["loading_seconds"], "epochs": report["epochs"],
            "checkpoint_seconds": report["durations"].get("checkpoint_seconds_this_session", 0.0),
            "parameters": report["model"]["parameters"],
            "train_images": report["data"]["train"] + report["data"]["validation"], "wall_seconds": wall}


def machine() -> dict[str, Any]:
    """What ran the benchmark: CPU model and count, memory, OS, Python, TensorFlow."""
    cpu_model = platform.processor() or platform.machine()
    memory_gib = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass  # not Linux: platform's answer stands
    from importlib import metadata

    try:
        tensorflow = metadata.version("tensorflow")
    except metadata.PackageNotFoundError:
        tensorflow = "not installed"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu_model, "cpus": cpus, "memory_gib": memory_gib, "platform": platform.platform(),
            "python": platform.python_version(), "tensorflow": tensorflow}


def table(plain: dict[str, Any], ours: dict[str, Any], ratio: float) -> str:
    rows = [("", "plain recipe", "edge-train", "edge-train / plain"),
            ("training seconds", f"{plain['training_seconds']:.1f}", f"{ours['training_seconds']:.1f}",
             f"{ratio:.3f}"),
            ("test accuracy, last epoch", f"{plain['test_accuracy']:.4f}", f"{ours['last_epoch_test_accuracy']:.4f}",
             ""),
            (f"test accuracy, kept epoch ({ours['kept_epoch']})", "", f"{ours['test_accuracy']:.4f}", ""),
            ("  of which checkpoints", "", f"{ours['checkpoint_seconds']:.1f}", ""),
            ("loading seconds", f"{plain['loading_seconds']:.1f}", f"{ours['loading_seconds']:.1f}", ""),
            ("process wall seconds", f"{plain['wall_seconds']:.1f}", f"{ours['wall_seconds']:.1f}", "")]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i])
                               for i, cell in enumerate(row)) for row in rows)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help=f"Image folders with train/ and test/.  [default: {DEFAULT_DATA}]")
@click.option("--epochs", type=click.IntRange(min=1), default=RECIPE_EPOCHS, show_default=True)
@click.option("--limit", type=click.IntRange(min=2), default=None,
              help="Use only this many training images per class (and a fifth as many test images).")
@click.option("--seed", type=int, default=DEFAULT_SEED, show_default=True)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the result as JSON here.")
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Keep edge-train's outputs here instead of a temporary folder.")
def main(data: Path | None, epochs: int, limit: int | None, seed: int, json_path: Path | None,
         work: Path | None) -> None:
    """Time edge-train against the plain recipe on the same data, in one run."""
    data = data if data is not None else DEFAULT_DATA
    if not (data / "train").is_dir() or not (data / "test").is_dir():
        raise click.BadParameter(f"{data} has no train/ and test/ folders", param_hint="--data")
    full_recipe = epochs == RECIPE_EPOCHS and limit is None
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        source = make_subset(data, limit, Path(scratch) / "subset") if limit else data
        out = work if work is not None else Path(scratch) / "out"
        started = time.strftime("%Y-%m-%d %H:%M:%S %z")
        plain = run_plain(source, epochs, seed, env)
        ours = run_edge_train(source, epochs, seed, out, env)
    ratio = ours["training_seconds"] / plain["training_seconds"]
    click.echo(table(plain, ours, ratio))

    failures = []
    min_test_accuracy = load_floors().MIN_TEST_ACCURACY
    if full_recipe:
        if ours["test_accuracy"] < min_test_accuracy:
            failures.append(f"kept-epoch test accuracy {ours['test_accuracy']:.4f} is below {min_test_accuracy}")
        if ratio > MAX_TIME_RATIO:
            failures.append(f"training took {ratio:.3f}x the plain recipe's time, more than {MAX_TIME_RATIO}x")
        click.echo("targets: " + ("; ".join(failures) if failures else
                                  f"met (accuracy >= {min_test_accuracy}, time ratio <= {MAX_TIME_RATIO})"))
    else:
        click.echo("targets not checked: not the full recipe (15 epochs on all images)")

    if json_path is not None:
        result = {"date": started, "command": " ".join([Path(sys.executable).name, *sys.argv]),
                  "machine": machine(), "data": str(data), "epochs": epochs, "limit": limit, "seed": seed,
                  "plain": plain, "edge_train": ours, "time_ratio": ratio, "full_recipe": full_recipe,
                  "targets": {"min_test_accuracy": min_test_accuracy, "max_time_ratio": MAX_TIME_RATIO},
                  "passed": (not failures) if full_recipe else None, "failures": failures}
        write_result(json_path, result)
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
