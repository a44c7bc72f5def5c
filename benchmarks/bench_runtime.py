"""Benchmark edge-classify against issue 4's targets, each comparison side by side in one run.

1. Cold start: `edge-classify photo.jpg` (int8, the model from $EDGE_CLASSIFY_MODEL) against the
   minimal ai-edge-litert script (baseline_litert.py) and a Keras script (baseline_keras.py):
   median wall time and peak RSS of fresh processes, run in turns.
       targets: wall <= 1.3x and peak memory <= 1.5x of the litert script
2. Throughput: the test folder (10,000 CIFAR-10 JPEGs) classified by `edge-classify --json -r
   FOLDER -o FILE` against a bare single-thread loop (baseline_loop.py: open, convert, resize,
   set tensor, invoke) over the same files, files in the page cache, run in turns; plus the
   accuracy of the JSON answers against report.json's int8 accuracy.
       targets: images/s >= 0.9x the bare loop; accuracy equal to the report's
3. Latency: per-image time of Classifier.scores over preloaded images against a bare
   set_tensor/invoke/get_tensor loop on the same interpreter settings (one thread), int8 and float32.
       target: <= 1.2x the bare loop

    python benchmarks/bench_runtime.py [--out artifacts] [--data ../shared/datasets/cifar10-jpeg]
        [--int8 OUT/model_int8.tflite] [--float32 OUT/model_float32.tflite] [--keras OUT/model.keras]
        [--report OUT/report.json] [--json summary.json]

Subprocesses run with the environment a user has: PYTHONUNBUFFERED and PYTHONDONTWRITEBYTECODE
are removed, and edge_runtime is byte-compiled first, as `pip install` does. Timings on a shared
machine are noisy: every comparison alternates its two sides and reports medians.
Exit status 0 when every target is met, 1 when one is missed, 2 for bad options or missing files.
"""

from __future__ import annotations

import compileall
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
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = REPO_ROOT / "benchmarks"
DEFAULT_OUT = Path("artifacts")
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"
USER_ENV_DROP = ("PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONPROFILEIMPORTTIME")
# The console script pip writes for `edge-classify`, for a checkout that is not installed.
CONSOLE_SCRIPT = "import sys; from edge_runtime.cli import main; sys.exit(main())"
KIB = 1024.0
MS = 1000.0
# Issue 4, "What it must show".
MAX_COLD_WALL_RATIO = 1.3
MAX_COLD_MEMORY_RATIO = 1.5
MIN_THROUGHPUT_RATIO = 0.9
MAX_LATENCY_RATIO = 1.2
ACCURACY_TOLERANCE = 1e-9


@dataclasses.dataclass(frozen=True)
class ProcessRun:
    """One finished process: wall seconds, CPU seconds and peak resident memory in MiB."""

    wall_s: float
    cpu_s: float
    peak_mib: float
    stdout: str


@dataclasses.dataclass(frozen=True)
class Check:
    """One target: what was measured, the bound, and whether it holds."""

    name: str
    value: float
    target: str
    passed: bool


def user_environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in USER_ENV_DROP}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.update(extra or {})
    return env


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


# --- 1. cold start ------------------------------------------------------------------------------

def cold_start(int8: Path, keras: Path | None, photo: Path, repeats: int, keras_repeats: int) -> dict[str, Any]:
    python = sys.executable
    env = user_environment({"EDGE_CLASSIFY_MODEL": str(int8)})
    commands = {
        "edge-classify": lambda: run_process([python, "-c", CONSOLE_SCRIPT, str(photo)], env),
        "litert script": lambda: run_process([python, str(BENCHMARKS / "baseline_litert.py"), str(int8), str(photo)],
                                             env),
    }
    runs = alternate(commands, repeats)
    if keras is not None:
        keras_env = user_environment({"TF_CPP_MIN_LOG_LEVEL": "2"})
        runs.update(alternate({"keras script": lambda: run_process(
            [python, str(BENCHMARKS / "baseline_keras.py"), str(keras), str(photo)], keras_env)}, keras_repeats))
    result = {name: {"wall_s": median(r.wall_s for r in items), "cpu_s": median(r.cpu_s for r in items),
                     "peak_mib": median(r.peak_mib for r in items), "runs": len(items)}
              for name, items in runs.items()}
    cli_answer = runs["edge-classify"][0].stdout.strip()
    litert_answer = int(runs["litert script"][0].stdout.strip())
    from edge_runtime.metadata import read_metadata

    metadata = read_metadata(int8)
    expected_label = metadata.labels[litert_answer] if metadata else str(litert_answer)
    result["same_answer"] = cli_answer.rsplit(": ", 1)[-1].split()[0] == expected_label
    result["photo"] = str(photo)
    return result


# --- 2. folder throughput -----------------------------------------------------------------------

def warm_page_cache(paths: list[Path]) -> None:
    for path in paths:
        path.read_bytes()


def folder_throughput(int8: Path, folder: Path, repeats: int, work: Path) -> dict[str, Any]:
    python = sys.executable
    env = user_environment()
    json_path = work / "edge-classify.jsonl"
    answers_path = work / "bare.tsv"
    paths = sorted(folder.rglob("*.jpg"))
    warm_page_cache(paths)
    commands = {
        "edge-classify": lambda: run_process([python, "-c", CONSOLE_SCRIPT, "--model", str(int8), "--json", "-r",
                                              "-o", str(json_path), str(folder)], env),
        "bare loop": lambda: run_process([python, str(BENCHMARKS / "baseline_loop.py"), str(int8), str(folder),
                                          str(answers_path)], env),
    }
    runs = alternate(commands, repeats)
    count = len(paths)
    records = [json.loads(line) for line in json_path.read_text().splitlines()]
    bare_answers = dict(line.split("\t") for line in answers_path.read_text().splitlines())
    from edge_runtime.metadata import read_metadata

    metadata = read_metadata(int8)
    labels = metadata.labels if metadata else [str(i) for i in range(len(set(bare_answers.values())))]
    correct = sum(Path(r["path"]).parent.name == r.get("label") for r in records)
    same_as_bare = sum(labels[int(bare_answers[r["path"]])] == r.get("label") for r in records)
    loop_seconds = [float(r.stdout.split()[1]) for r in runs["bare loop"]]
    result = {
        "images": count,
        "classified": sum("label" in r for r in records),
        "edge_classify_images_per_s": count / median(r.wall_s for r in runs["edge-classify"]),
        "bare_loop_images_per_s": count / median(r.wall_s for r in runs["bare loop"]),
        "bare_loop_only_images_per_s": count / median(loop_seconds),
        "edge_classify_wall_s": [r.wall_s for r in runs["edge-classify"]],
        "bare_loop_wall_s": [r.wall_s for r in runs["bare loop"]],
        "accuracy": correct / len(records) if records else 0.0,
        "correct": correct,
        "agreement_with_bare_loop": same_as_bare / len(records) if records else 0.0,
    }
    result["ratio"] = result["edge_classify_images_per_s"] / result["bare_loop_images_per_s"]
    return result


def report_int8_accuracy(report: Path) -> tuple[float, int, int] | None:
    """(accuracy, correct, images) of the int8 model in report.json, or None without a report."""
    if not report.is_file():
        return None
    data = json.loads(report.read_text())
    for entry in data.get("formats", []):
        if entry.get("name") == "int8":
            return float(entry["accuracy"]), int(entry["correct"]), int(data["data"]["images"])
    return None


# --- 3. latency over preloaded images -----------------------------------------------------------

def preloaded_latency(model: Path, pixels: np.ndarray, repeats: int) -> dict[str, Any]:
    from ai_edge_litert.interpreter import Interpreter

    from edge_runtime.classify import Classifier

    classifier = Classifier(model, threads=1)
    interpreter = Interpreter(model_path=str(model), num_threads=1)
    interpreter.allocate_tensors()
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    inputs = [classifier.quantize_input(image) for image in pixels]  # the bare loop gets them ready-made
    input_index, output_index = inp["index"], out["index"]

    def bare() -> float:
        set_tensor, invoke, get_tensor = interpreter.set_tensor, interpreter.invoke, interpreter.get_tensor
        start = time.perf_counter()
        for values in inputs:
            set_tensor(input_index, values)
            invoke()
            get_tensor(output_index)
        return (time.perf_counter() - start) / len(inputs)

    def ours() -> float:
        scores = classifier.scores
        start = time.perf_counter()
        for image in pixels:
            scores(image)
        return (time.perf_counter() - start) / len(pixels)

    bare(), ours()  # warm-up
    bare_times, our_times = [], []
    for _ in range(repeats):
        bare_times.append(bare())
        our_times.append(ours())
    result = {"classifier_ms": median(our_times) * MS, "bare_ms": median(bare_times) * MS,
              "classifier_min_ms": min(our_times) * MS, "bare_min_ms": min(bare_times) * MS,
              "images": len(pixels), "repeats": repeats, "input": np.dtype(inp["dtype"]).name}
    result["ratio"] = result["classifier_ms"] / result["bare_ms"]
    return result


# --- targets and output -------------------------------------------------------------------------

def evaluate(summary: dict[str, Any]) -> list[Check]:
    checks = []
    cold = summary["cold_start"]
    wall = cold["edge-classify"]["wall_s"] / cold["litert script"]["wall_s"]
    memory = cold["edge-classify"]["peak_mib"] / cold["litert script"]["peak_mib"]
    checks.append(Check("cold start wall vs litert script (x)", round(wall, 3), f"<= {MAX_COLD_WALL_RATIO}",
                        wall <= MAX_COLD_WALL_RATIO))
    checks.append(Check("cold start peak memory vs litert script (x)", round(memory, 3),
                        f"<= {MAX_COLD_MEMORY_RATIO}", memory <= MAX_COLD_MEMORY_RATIO))
    checks.append(Check("cold start answer equals litert script's", float(cold["same_answer"]), "== 1",
                        bool(cold["same_answer"])))
    folder = summary["throughput"]
    checks.append(Check("folder images/s vs bare loop (x)", round(folder["ratio"], 3), f">= {MIN_THROUGHPUT_RATIO}",
                        folder["ratio"] >= MIN_THROUGHPUT_RATIO))
    reported = summary.get("report_int8")
    if reported is not None:
        same = (abs(folder["accuracy"] - reported["accuracy"]) <= ACCURACY_TOLERANCE
                and folder["correct"] == reported["correct"] and folder["images"] == reported["images"])
        checks.append(Check("folder accuracy equals report.json int8", round(folder["accuracy"], 6),
                            f"== {reported['accuracy']:.6f}", same))
    for kind, latency in summary["latency"].items():
        checks.append(Check(f"{kind} latency vs bare interpreter loop (x)", round(latency["ratio"], 3),
                            f"<= {MAX_LATENCY_RATIO}", latency["ratio"] <= MAX_LATENCY_RATIO))
    return checks


def print_summary(summary: dict[str, Any], checks: list[Check]) -> None:
    cold = summary["cold_start"]
    click.echo(f"cold start ({cold['photo']}), medians of fresh processes:")
    for name in ("edge-classify", "litert script", "keras script"):
        if name in cold:
            item = cold[name]
            click.echo(f"  {name:14s} {item['wall_s'] * MS:8.1f} ms wall  {item['cpu_s'] * MS:8.1f} ms cpu  "
                       f"{item['peak_mib']:6.1f} MiB  ({item['runs']} runs)")
    if "keras script" in cold:
        click.echo(f"  edge-classify vs keras script: {cold['edge-classify']['wall_s'] / cold['keras script']['wall_s']:.3f}x"
                   f" wall, {cold['edge-classify']['peak_mib'] / cold['keras script']['peak_mib']:.3f}x memory")
    folder = summary["throughput"]
    click.echo(f"folder of {folder['images']} JPEGs, end to end (process start to exit), medians:")
    click.echo(f"  edge-classify --json -r -o  {folder['edge_classify_images_per_s']:8.0f} images/s")
    click.echo(f"  bare loop                   {folder['bare_loop_images_per_s']:8.0f} images/s "
               f"(its loop alone: {folder['bare_loop_only_images_per_s']:.0f} images/s)")
    click.echo(f"  ratio {folder['ratio']:.3f}; accuracy {folder['accuracy']:.4f} ({folder['correct']} correct); "
               f"same answer as the bare loop for {folder['agreement_with_bare_loop']:.4%}")
    reported = summary.get("report_int8")
    click.echo(f"  report.json int8 accuracy: {reported['accuracy']:.4f} ({reported['correct']} of "
               f"{reported['images']})" if reported else "  report.json: not found, accuracy not compared")
    for kind, latency in summary["latency"].items():
        click.echo(f"latency {kind} ({latency['input']} input, {latency['images']} preloaded images, 1 thread): "
                   f"Classifier.scores {latency['classifier_ms']:.4f} ms, bare {latency['bare_ms']:.4f} ms, "
                   f"ratio {latency['ratio']:.3f}")
    click.echo("targets:")
    for check in checks:
        click.echo(f"  {'PASS' if check.passed else 'FAIL'}  {check.name}: {check.value} (target {check.target})")


@click.command()
@click.option("--out", type=click.Path(path_type=Path), default=DEFAULT_OUT, show_default=True,
              help="Artifacts folder: model_int8.tflite, model_float32.tflite, model.keras, report.json.")
@click.option("--int8", "int8", type=click.Path(path_type=Path), help="Default: OUT/model_int8.tflite.")
@click.option("--float32", "float32", type=click.Path(path_type=Path), help="Default: OUT/model_float32.tflite.")
@click.option("--keras", type=click.Path(path_type=Path),
              help="Keras model for the TensorFlow cold-start comparison (default OUT/model.keras; "
                   "skipped when missing).")
@click.option("--data", type=click.Path(path_type=Path), default=DEFAULT_DATA, show_default=True,
              help="CIFAR-10 JPEG root with a test/ folder.")
@click.option("--report", type=click.Path(path_type=Path), help="Default: OUT/report.json.")
@click.option("--json", "json_path", type=click.Path(path_type=Path), help="Write the numbers here.")
@click.option("--cold-repeats", default=15, show_default=True, type=click.IntRange(min=1))
@click.option("--keras-repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--folder-repeats", default=3, show_default=True, type=click.IntRange(min=1))
@click.option("--latency-images", default=1000, show_default=True, type=click.IntRange(min=1))
@click.option("--latency-repeats", default=7, show_default=True, type=click.IntRange(min=1))
def main(out: Path, int8: Path | None, float32: Path | None, keras: Path | None, data: Path,
         report: Path | None, json_path: Path | None, cold_repeats: int, keras_repeats: int,
         folder_repeats: int, latency_images: int, latency_repeats: int) -> None:
    """Measure edge-classify against issue 4's targets and print PASS or FAIL for each."""
    sys.path.insert(0, str(REPO_ROOT))
    # Absolute paths: the measured processes run from the repository root.
    int8 = (int8 or out / "model_int8.tflite").resolve()
    float32 = (float32 or out / "model_float32.tflite").resolve()
    keras = (keras or out / "model.keras").resolve()
    report = (report or out / "report.json").resolve()
    data = data.resolve()
    test_folder = data / "test"
    for path, what in ((int8, "int8 model"), (float32, "float32 model"), (test_folder, "test folder")):
        if not path.exists():
            raise click.UsageError(f"{path}: {what} not found")
    compileall.compile_dir(str(REPO_ROOT / "edge_runtime"), quiet=1)
    photo = min(test_folder.rglob("*.jpg"))
    summary: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                           "load_average": list(os.getloadavg())}}
    click.echo("measuring cold start ...", err=True)
    summary["cold_start"] = cold_start(int8, keras if keras.exists() else None, photo, cold_repeats, keras_repeats)
    click.echo("measuring folder throughput ...", err=True)
    with tempfile.TemporaryDirectory() as work:
        summary["throughput"] = folder_throughput(int8, test_folder, folder_repeats, Path(work))
    reported = report_int8_accuracy(report)
    if reported is not None:
        summary["report_int8"] = {"accuracy": reported[0], "correct": reported[1], "images": reported[2]}
    click.echo("measuring latency over preloaded images ...", err=True)
    from edge_runtime.classify import Classifier

    loader = Classifier(int8)
    paths = sorted(test_folder.rglob("*.jpg"))[:latency_images]
    pixels = np.stack([loader.load(path) for path in paths])
    summary["latency"] = {kind: preloaded_latency(model, pixels, latency_repeats)
                          for kind, model in (("int8", int8), ("float32", float32))}
    summary["machine"]["load_average_after"] = list(os.getloadavg())
    checks = evaluate(summary)
    summary["targets"] = [dataclasses.asdict(check) for check in checks]
    print_summary(summary, checks)
    if json_path is not None:
        from edge_runtime.atomic import write_text

        write_text(json_path, json.dumps(summary, indent=2) + "\n")
    sys.exit(0 if all(check.passed for check in checks) else 1)


if __name__ == "__main__":
    main()
