"""Benchmark the converter against issue 3's targets on a trained model and its data.

Given an OUT folder with the trainer's model.keras (and training.json naming the data and seed),
this converts it twice with the same seed (into OUT, as `make convert` does, and into a temporary
folder), checks that both int8 files have the same sha256, writes the quantization report into OUT
(as `make report` does) and prints, against the targets:

  float32 agreement with Keras      100%
  int8 accuracy change              at most 0.5 points lost
  int8 top-1 agreement with Keras   at least 98%
  int8 size / float32 size          at most 27%
  same seed, same int8 sha256       yes

Then, side by side in the same run, it converts int8 again for --compare-seeds calibration draws
(the seed and the ones after it), each twice: with the default clipped logit range and with plain
min/max calibration (`edge-convert --minmax-logits`). It prints each pair's agreement with Keras and
accuracy change, and the ratio of their disagreements.

    python benchmarks/bench_convert.py --out artifacts [--data ../shared/datasets/cifar10-jpeg] [--json summary.json]

Exit status 0 when every target is met, 1 when one is missed, 2 for bad options.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click

DEFAULT_OUT = Path("artifacts")
DEFAULT_CALIBRATION_SIZE = 500
DEFAULT_COMPARE_SEEDS = 4
PERCENT = 100.0
# Issue 3, "What it must show".
FLOAT32_MIN_AGREEMENT_PERCENT = 100.0
INT8_MAX_DROP_POINTS = 0.5
INT8_MIN_AGREEMENT_PERCENT = 98.0
INT8_MAX_SIZE_RATIO = 0.27


@dataclasses.dataclass(frozen=True)
class Check:
    """One target: what was measured, the bound, and whether it holds."""

    name: str
    value: Any
    target: str
    passed: bool


def evaluate_targets(summary: dict[str, Any]) -> list[Check]:
    """The issue's targets applied to the measured numbers."""
    return [
        Check("float32 top-1 agreement with Keras (%)", round(summary["float32_agreement_percent"], 4),
              f">= {FLOAT32_MIN_AGREEMENT_PERCENT:g}",
              summary["float32_agreement_percent"] >= FLOAT32_MIN_AGREEMENT_PERCENT),
        Check("int8 accuracy change vs Keras (points)", round(summary["int8_accuracy_change_pp"], 4),
              f">= -{INT8_MAX_DROP_POINTS:g}", -summary["int8_accuracy_change_pp"] <= INT8_MAX_DROP_POINTS),
        Check("int8 top-1 agreement with Keras (%)", round(summary["int8_agreement_percent"], 4),
              f">= {INT8_MIN_AGREEMENT_PERCENT:g}", summary["int8_agreement_percent"] >= INT8_MIN_AGREEMENT_PERCENT),
        Check("int8 size / float32 size (%)", round(summary["int8_size_ratio"] * PERCENT, 2),
              f"<= {INT8_MAX_SIZE_RATIO * PERCENT:g}", summary["int8_size_ratio"] <= INT8_MAX_SIZE_RATIO),
        Check("same seed gives the same int8 sha256", summary["int8_same_sha256"], "yes",
              bool(summary["int8_same_sha256"])),
    ]


def run_benchmark(out: Path, data: str | None = None, seed: int | None = None,
                  calibration_size: int = DEFAULT_CALIBRATION_SIZE, quiet: bool = False,
                  compare_seeds: int = DEFAULT_COMPARE_SEEDS) -> dict[str, Any]:
    """Convert twice, report once, compare logit ranges; return the summary (numbers, timings, checks)."""
    from converter.artifacts import KERAS_MODEL_NAME
    from converter.convert import convert_model
    from converter.data import load_data, resolve_data
    from converter.report import build_report, threshold_failures, tflite_models
    from converter.report_render import terminal_summary, write_report
    from converter.source_model import load_keras_model, training_spec
    from converter.variants import FLOAT32, INT8

    def say(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    model_path = out / KERAS_MODEL_NAME
    timings: dict[str, float] = {}
    choice = resolve_data(model_path, data, seed)
    say(f"data: {choice.describe()}")
    model = load_keras_model(model_path)
    spec = training_spec(model_path, model)  # the model's own input scaling, as edge-report uses it
    started = time.perf_counter()
    dataset = load_data(choice, quiet=quiet, spec=spec)
    timings["load_data_seconds"] = time.perf_counter() - started
    conversion = dict(train_images=dataset.train_images, calibration_size=calibration_size, seed=choice.seed,
                      data_source=dataset.source, model=model, progress=say)

    started = time.perf_counter()
    first = convert_model(model_path, out, **conversion)
    timings["convert_seconds"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory(prefix="bench-convert-") as second_out:
        second = convert_model(model_path, second_out, **conversion)
    same_int8 = first.model(INT8).sha256 == second.model(INT8).sha256
    same_float32 = first.model(FLOAT32).sha256 == second.model(FLOAT32).sha256

    started = time.perf_counter()
    report = build_report(model, tflite_models(out), dataset.test_images, dataset.test_labels, dataset.class_names,
                          test_paths=dataset.test_paths, data_source=dataset.source, seed=choice.seed,
                          keras_sha256=first.source_sha256, spec=spec, progress=say)
    timings["report_seconds"] = time.perf_counter() - started
    failures = threshold_failures(report, INT8_MAX_DROP_POINTS, INT8_MIN_AGREEMENT_PERCENT)
    files = write_report(report, out, failures=failures)
    click.echo(terminal_summary(report), nl=False)

    keras, float32, int8 = report.format("keras"), report.format(FLOAT32), report.format(INT8)
    summary: dict[str, Any] = {
        "data": dataset.source,
        "seed": choice.seed,
        "test_images": report.num_images,
        "calibration_images": first.calibration_count,
        "keras_accuracy": keras.accuracy,
        "float32_accuracy": float32.accuracy,
        "int8_accuracy": int8.accuracy,
        "float32_agreement_percent": float32.agreement * PERCENT,
        "float32_max_abs_prob_diff": float32.max_abs_prob_diff,
        "int8_accuracy_change_pp": int8.accuracy_change_pp,
        "int8_agreement_percent": int8.agreement * PERCENT,
        "int8_mean_abs_prob_diff": int8.mean_abs_prob_diff,
        "int8_max_abs_prob_diff": int8.max_abs_prob_diff,
        "float32_bytes": float32.size_bytes,
        "int8_bytes": int8.size_bytes,
        "int8_size_ratio": report.size_ratio(INT8),
        "float32_latency_ms": float32.latency_ms,
        "int8_latency_ms": int8.latency_ms,
        "latency_backend": report.backend,
        "latency_threads": report.threads,
        "int8_sha256": first.model(INT8).sha256,
        "int8_sha256_second_run": second.model(INT8).sha256,
        "int8_same_sha256": same_int8,
        "float32_same_sha256": same_float32,
        "report": str(files.markdown),
        "notes": report.notes,
    }
    started = time.perf_counter()
    summary["logit_range_comparison"] = compare_logit_ranges(
        model, model_path, dataset, calibration_size, [choice.seed + offset for offset in range(compare_seeds)], spec,
        say)
    timings["comparison_seconds"] = time.perf_counter() - started
    summary["timings"] = {key: round(value, 2) for key, value in timings.items()}
    checks = evaluate_targets(summary)
    summary["checks"] = [dataclasses.asdict(check) for check in checks]
    summary["passed"] = all(check.passed for check in checks)
    return summary


def compare_logit_ranges(model: Any, model_path: Path, dataset: Any, calibration_size: int,
                         seeds: list[int], spec: Any, say: Any) -> list[dict[str, Any]]:
    """int8 with the clipped logit range and with plain min/max, per calibration seed, through the runtime."""
    from converter.convert import convert_model
    from converter.report import compare_format, keras_probabilities, runtime_probabilities
    from converter.variants import INT8

    if not seeds:
        return []
    reference = keras_probabilities(model, dataset.test_images, spec)
    rows = []
    for seed in seeds:
        row: dict[str, Any] = {"seed": seed}
        for name, clip in (("clipped", True), ("minmax", False)):
            say(f"comparison: seed {seed}, {name} logits")
            with tempfile.TemporaryDirectory(prefix="bench-logits-") as folder:
                converted = convert_model(model_path, folder, variants=(INT8,), train_images=dataset.train_images,
                                          calibration_size=calibration_size, seed=seed, model=model,
                                          clip_logits=clip)
                evaluation = runtime_probabilities(converted.model(INT8).path, images=dataset.test_images)
            result = compare_format(name, evaluation.probabilities, dataset.test_labels, reference,
                                    len(dataset.class_names))
            row[f"{name}_agreement_percent"] = result.agreement * PERCENT
            row[f"{name}_accuracy_change_pp"] = result.accuracy_change_pp
        row["disagreement_ratio"] = ((PERCENT - row["clipped_agreement_percent"])
                                     / max(PERCENT - row["minmax_agreement_percent"], 1e-9))
        rows.append(row)
    return rows


def format_comparison(rows: list[dict[str, Any]]) -> str:
    """The logit-range comparison as an aligned table, with the means."""
    if not rows:
        return ""
    lines = ["int8 agreement with Keras (%) and accuracy change (points), clipped logit range vs plain min/max",
             f"{'seed':>6}  {'clipped':>8}  {'minmax':>8}  {'clipped pp':>10}  {'minmax pp':>9}  disagreement ratio"]
    for row in rows:
        lines.append(f"{row['seed']:>6}  {row['clipped_agreement_percent']:8.2f}  {row['minmax_agreement_percent']:8.2f}  "
                     f"{row['clipped_accuracy_change_pp']:+10.2f}  {row['minmax_accuracy_change_pp']:+9.2f}  "
                     f"{row['disagreement_ratio']:.2f}")
    mean = {key: sum(row[key] for row in rows) / len(rows) for key in rows[0] if key != "seed"}
    lines.append(f"{'mean':>6}  {mean['clipped_agreement_percent']:8.2f}  {mean['minmax_agreement_percent']:8.2f}  "
                 f"{mean['clipped_accuracy_change_pp']:+10.2f}  {mean['minmax_accuracy_change_pp']:+9.2f}  "
                 f"{mean['disagreement_ratio']:.2f}")
    return "\n".join(lines) + "\n"


def format_checks(checks: list[dict[str, Any]]) -> str:
    """The targets as an aligned table for the terminal."""
    width = max(len(check["name"]) for check in checks)
    lines = [f"{'target':{width}}  {'measured':>10}  {'bound':>8}  result"]
    for check in checks:
        value = "yes" if check["value"] is True else "no" if check["value"] is False else f"{check['value']:g}"
        lines.append(f"{check['name']:{width}}  {value:>10}  {check['target']:>8}  "
                     f"{'pass' if check['passed'] else 'FAIL'}")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=DEFAULT_OUT, show_default=True,
              help="Folder with the trained model.keras; the models and report are written there.")
@click.option("--data", default=None, help="Data set (default: training.json's).")
@click.option("--seed", type=int, default=None, help="Calibration seed (default: training.json's).")
@click.option("--calibration-size", type=click.IntRange(min=1), default=DEFAULT_CALIBRATION_SIZE, show_default=True)
@click.option("--compare-seeds", type=click.IntRange(min=0), default=DEFAULT_COMPARE_SEEDS, show_default=True,
              help="Calibration draws for the clipped vs min/max logit comparison (0 skips it).")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the summary here as JSON.")
@click.option("--quiet", "-q", is_flag=True)
def main(out: Path, data: str | None, seed: int | None, calibration_size: int, compare_seeds: int,
         json_path: Path | None, quiet: bool) -> None:
    """Convert twice with one seed, run the report, and check issue 3's targets."""
    from edge_runtime.atomic import write_text
    from edge_runtime.errors import EdgeError

    try:
        summary = run_benchmark(out, data, seed, calibration_size, quiet, compare_seeds)
    except EdgeError as error:
        raise click.ClickException(str(error)) from error
    second = "identical" if summary["int8_same_sha256"] else f"DIFFERENT: {summary['int8_sha256_second_run']}"
    click.echo(f"int8 sha256 {summary['int8_sha256']} (second run: {second})")
    click.echo(format_comparison(summary["logit_range_comparison"]), nl=False)
    click.echo(format_checks(summary["checks"]), nl=False)
    if json_path is not None:
        write_text(json_path, json.dumps(summary, indent=2) + "\n")
        click.echo(f"wrote {json_path}", err=True)
    if not summary["passed"]:
        raise click.ClickException("some of issue 3's targets are missed (see the table above)")


if __name__ == "__main__":
    # Run from a checkout without installing: the repository root holds converter/ and edge_runtime/.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
