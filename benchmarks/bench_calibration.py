"""What the int8 step costs a trained model, per calibration count and draw, on its validation share (issue 24).

Given an OUT folder with the trainer's model.keras and training.json, this converts the model to int8 with
the converter's defaults (clipped logit range, builtin int8 ops) for each calibration count of `--sizes` and
each of `--draws` calibration seeds (training.json's seed and the ones after it), and runs each int8 file
through the runtime on the training run's **validation share** (the images it held out, rebuilt from
training.json's seed and counts), never on the test set: a choice made here must not see the test images.
The converter draws its calibration images from all training images, the validation share included; that
uses no label.

Per conversion it prints, against Keras on the same images:
  agreement   share of images whose int8 top-1 is Keras' top-1
  change      int8 accuracy minus Keras accuracy, in points
  ties        share of images whose highest int8 score is shared by two classes or more (the int8 softmax
              has 256 steps; the runtime then answers the first of them)
  tie losses  images that a tie made wrong while Keras was right: how much a better tie rule could win back

then the mean and spread per count. With `--compare-pool` every conversion is made twice, side by side: as
the converter makes it (a whole-map average pool before the head converted as a mean, `converter.int8_graph`)
and with the average pool kept, as before that change. With `--ranges` it also prints, for each count's
first draw, every ReLU output's largest value over the calibration images (what the calibrator's range ends
at) beside its 99.99th percentile. Nothing is asserted (figures for BENCHMARKS.md).

    .venv/bin/python benchmarks/bench_calibration.py --out OUT [--sizes 100,500,2000,8000] [--draws 3]
        [--compare-pool] [--ranges]
"""

from __future__ import annotations

import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import click
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from benchmarks.harness import cpu_model  # noqa: E402

DEFAULT_SIZES = "100,500,2000,8000"
DEFAULT_DRAWS = 3
POOL_NAMES = {True: "mean", False: "average pool"}  # convert_model's mean_pool, as the tables name it
PERCENT = 100.0


def validation_share(info: dict[str, Any]) -> tuple[np.ndarray, int]:
    """(indices of the held-out training images, seed): trainer.validation.shuffled_split's permutation,
    cut where training.json's own counts say."""
    from edge_runtime.errors import DataError

    data = info.get("data") or {}
    train, held_out, seed = data.get("train"), data.get("validation"), info.get("seed")
    if not all(isinstance(value, int) for value in (train, held_out, seed)) or not held_out:
        raise DataError("training.json does not record a seed and a validation share to measure on")
    order = np.random.default_rng(seed).permutation(train + held_out)
    return order[train:], seed


def tie_figures(int8: np.ndarray, keras: np.ndarray, labels: np.ndarray) -> tuple[float, int]:
    """(share of images whose top int8 score is tied, images a tie made wrong where Keras was right)."""
    top = int8.max(axis=1, keepdims=True)
    tied = (int8 == top).sum(axis=1) > 1
    answered = int8.argmax(axis=1)
    tie_losses = tied & (answered != labels) & (keras.argmax(axis=1) == labels) & (int8[np.arange(len(labels)),
                                                                                        labels] == top[:, 0])
    return float(tied.mean()), int(tie_losses.sum())


def activation_ranges(model: Any, train_images: np.ndarray, spec: Any, sizes: list[int], seed: int) -> str:
    """Markdown: per ReLU layer, the largest output and its 99.99th percentile over each count's calibration draw."""
    import keras

    from converter.calibration import calibration_indices
    from edge_runtime.preprocess import scale_pixels

    layers = [layer for layer in model.layers if isinstance(layer, (keras.layers.Activation, keras.layers.ReLU))
              and getattr(layer, "activation", None) in (None, keras.activations.relu)]
    probe = keras.Model(model.inputs, [layer.output for layer in layers])
    lines = ["| ReLU output | " + " | ".join(f"{size:,} images: max / 99.99th percentile" for size in sizes) + " |",
             "|---|" + "---:|" * len(sizes)]
    columns = []
    for size in sizes:
        chosen = calibration_indices(len(train_images), size, seed)
        outputs = probe.predict(scale_pixels(train_images[chosen], spec), batch_size=256, verbose=0)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        columns.append([f"{output.max():.1f} / {np.percentile(output, 99.99):.1f}" for output in outputs])
    for index, layer in enumerate(layers):
        lines.append(f"| {layer.name} | " + " | ".join(column[index] for column in columns) + " |")
    return "\n".join(lines) + "\n"


def measure(out: Path, sizes: list[int], draws: int, say: Any, ranges: bool = False,
            mean_pools: tuple[bool, ...] = (True,)) -> dict[str, Any]:
    """Every (count, draw, pooling) conversion's figures on the validation share."""
    from converter.artifacts import KERAS_MODEL_NAME
    from converter.convert import convert_model
    from converter.data import load_data, read_training_info, resolve_data
    from converter.report import keras_probabilities, runtime_probabilities
    from converter.source_model import load_keras_model, training_spec
    from converter.variants import INT8

    model_path = out / KERAS_MODEL_NAME
    info = read_training_info(model_path)
    held_out, seed = validation_share(info)
    choice = resolve_data(model_path)
    say(f"data: {choice.describe()}")
    model = load_keras_model(model_path)
    spec = training_spec(model_path, model)  # the model's own input scaling, as edge-report uses it
    dataset = load_data(choice, quiet=True, splits=("train",), spec=spec)
    images = dataset.train_images[held_out]
    labels = np.asarray(dataset.train_labels)[held_out]
    keras = keras_probabilities(model, images, spec)
    keras_accuracy = float((keras.argmax(axis=1) == labels).mean())
    rows = []
    for size in sizes:
        for draw, mean_pool in itertools.product(range(seed, seed + draws), mean_pools):
            started = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="bench-calibration-") as folder:
                converted = convert_model(model_path, folder, variants=(INT8,), train_images=dataset.train_images,
                                          calibration_size=size, seed=draw, model=model, mean_pool=mean_pool,
                                          progress=lambda _: None)
                int8 = runtime_probabilities(converted.model(INT8).path, images=images).probabilities
            int8 = np.asarray(int8)
            ties, tie_losses = tie_figures(int8, keras, labels)
            row = {"calibration_images": size, "draw": draw, "pool_as": POOL_NAMES[mean_pool],
                   "agreement_percent": float((int8.argmax(axis=1) == keras.argmax(axis=1)).mean()) * PERCENT,
                   "change_points": (float((int8.argmax(axis=1) == labels).mean()) - keras_accuracy) * PERCENT,
                   "ties_percent": ties * PERCENT, "tie_losses": tie_losses,
                   "seconds": round(time.perf_counter() - started, 1)}
            rows.append(row)
            say(f"  {size:>6} images, draw {draw}, pool as {row['pool_as']}: agreement "
                f"{row['agreement_percent']:.2f}%, change {row['change_points']:+.2f} points, ties "
                f"{row['ties_percent']:.2f}%, tie losses {tie_losses} ({row['seconds']:.0f} s)")
    summary = {"model": str(model_path), "validation_images": int(len(held_out)), "keras_accuracy": keras_accuracy,
               "rows": rows}
    if ranges:
        summary["ranges"] = activation_ranges(model, dataset.train_images, spec, sizes, seed)
    return summary


def table(summary: dict[str, Any]) -> str:
    """Markdown: each conversion, then the mean and spread per calibration count and pooling."""
    lines = ["| calibration images | draw | pool as | agreement with Keras | int8 change (points) | tied top scores | "
             "tie losses |", "|---:|---:|---|---:|---:|---:|---:|"]
    for row in summary["rows"]:
        lines.append(f"| {row['calibration_images']:,} | {row['draw']} | {row['pool_as']} | "
                     f"{row['agreement_percent']:.2f}% | {row['change_points']:+.2f} | {row['ties_percent']:.2f}% | "
                     f"{row['tie_losses']} |")
    lines += ["", "| calibration images | pool as | mean agreement | mean change (points) | change, lowest to "
              "highest |", "|---:|---|---:|---:|---|"]
    for size, pool_as in dict.fromkeys((row["calibration_images"], row["pool_as"]) for row in summary["rows"]):
        rows = [row for row in summary["rows"] if (row["calibration_images"], row["pool_as"]) == (size, pool_as)]
        changes = [row["change_points"] for row in rows]
        lines.append(f"| {size:,} | {pool_as} | {statistics.mean(row['agreement_percent'] for row in rows):.2f}% | "
                     f"{statistics.mean(changes):+.2f} | {min(changes):+.2f} to {max(changes):+.2f} |")
    return "\n".join(lines) + "\n"


@click.command()
@click.option("--out", type=click.Path(path_type=Path, file_okay=False, exists=True), required=True,
              help="Folder with the trained model.keras and its training.json.")
@click.option("--sizes", default=DEFAULT_SIZES, show_default=True, help="Calibration counts, comma-separated.")
@click.option("--draws", type=click.IntRange(min=1), default=DEFAULT_DRAWS, show_default=True,
              help="Calibration seeds per count: training.json's seed and the ones after it.")
@click.option("--compare-pool", is_flag=True,
              help="Also convert each draw with a whole-map average pool kept as a pool, side by side.")
@click.option("--ranges", is_flag=True, help="Also each ReLU output's largest value and 99.99th percentile per count.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the figures here as JSON.")
def main(out: Path, sizes: str, draws: int, compare_pool: bool, ranges: bool, json_path: Path | None) -> None:
    """int8's agreement with Keras and accuracy change on the validation share, per calibration count and draw."""
    from edge_runtime.atomic import write_text
    from edge_runtime.errors import EdgeError

    try:
        counts = [int(size) for size in sizes.split(",")]
    except ValueError:
        raise click.BadParameter(f"{sizes!r} is not a comma-separated list of counts", param_hint="--sizes")
    if not counts or min(counts) < 1:
        raise click.BadParameter("every calibration count must be at least 1", param_hint="--sizes")
    click.echo(f"machine: {cpu_model()}", err=True)
    try:
        summary = measure(out, counts, draws, lambda message: click.echo(message, err=True), ranges,
                          (True, False) if compare_pool else (True,))
    except EdgeError as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"{summary['validation_images']:,} validation images; Keras accuracy {summary['keras_accuracy']:.4f}")
    click.echo(table(summary), nl=False)
    if "ranges" in summary:
        click.echo("")
        click.echo(summary["ranges"], nl=False)
    if json_path is not None:
        write_text(json_path, json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
