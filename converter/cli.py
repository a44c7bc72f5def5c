"""`edge-convert` and `edge-report`: thin shells over `converter.convert` and `converter.report`.

Options are parsed here; every error the library raises becomes one `Error: ...` line and exit 1
(click's usage errors exit 2). TensorFlow and matplotlib load only after the options are valid; an
install without them (the device's `[edge]` extra) gets one line naming the extra to install.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from edge_runtime.errors import EdgeError
from edge_runtime.model_file.manifest import sha256_file
from trainer.tensorflow_env import CONVERT_PACKAGES, TRAIN_EXTRA_PACKAGES, require_packages

from .artifacts import KERAS_MODEL_NAME, LABELS_NAME
from .calibration import DEFAULT_CALIBRATION_SIZE, calibration_indices, check_calibration_size
from .convert import convert_model
from .data import load_data, resolve_data
from .smoke_image import smoke_source_of
from .source_model import check_keras_file, load_keras_model, load_labels_for, training_spec
from .variants import DEFAULT_VARIANTS, VARIANTS, needs_calibration, parse_variants

DEFAULT_ARTIFACTS = Path("artifacts")
DEFAULT_MODEL = DEFAULT_ARTIFACTS / KERAS_MODEL_NAME
REPORT_COMMAND = "report"  # `python -m converter.cli report ...` runs edge-report
VERBOSE_LOGGERS = ("converter", "edge_runtime", "trainer")


def _configure_logging(verbose: bool) -> None:
    """Warnings only; with --verbose, debug lines of this toolkit's own modules (not of every library)."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    if verbose:
        for name in VERBOSE_LOGGERS:
            logging.getLogger(name).setLevel(logging.DEBUG)


def _os_error_line(error: OSError) -> str:
    """`path: reason` for a file-system error."""
    reason = error.strerror or str(error)
    return f"{error.filename}: {reason}" if error.filename else reason


def _say(quiet: bool):
    """A progress callback: lines on stderr unless quiet."""
    def say(message: str) -> None:
        if not quiet:
            click.echo(message, err=True)

    return say


def _variants_option(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, ...]:
    try:
        return parse_variants(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx=ctx, param=param) from error


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=DEFAULT_MODEL, show_default=True,
              help="The trained Keras model.")
@click.option("--labels", "labels_path", type=click.Path(path_type=Path), default=None,
              help=f"Class labels, one per line.  [default: {LABELS_NAME} beside the model]")
@click.option("--data", default=None,
              help="Data set for int8 calibration (training images only).  [default: training.json's]")
@click.option("--seed", type=int, default=None,
              help="Seed that draws the calibration images (the train/test split always follows training.json).  "
                   "[default: training.json's]")
@click.option("--calibration-size", type=click.IntRange(min=0), default=DEFAULT_CALIBRATION_SIZE,
              show_default=True, help="Training images used to calibrate int8.")
@click.option("--variants", default=",".join(DEFAULT_VARIANTS), show_default=True, callback=_variants_option,
              help=f"Comma-separated: {', '.join(VARIANTS)} (uint8: full-integer with uint8 input and output, "
                   "for tools that take no int8 tensors, such as MediaPipe).")
@click.option("--minmax-logits", is_flag=True,
              help="int8: quantize the logits over their full calibrated min/max (plain post-training "
                   "quantization) instead of the range that decides the answer.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder for the .tflite files and manifest.json.  [default: the model's folder]")
@click.option("--quiet", "-q", is_flag=True, help="Only errors.")
@click.option("--verbose", "-v", is_flag=True, help="Also debug logs, TensorFlow's own output among them.")
def main(model_path: Path, labels_path: Path | None, data: str | None, seed: int | None,
         calibration_size: int, variants: tuple[str, ...], minmax_logits: bool, out_dir: Path | None,
         quiet: bool, verbose: bool) -> None:
    """Convert a trained Keras model to float32 and full-integer int8 TFLite with labels embedded."""
    _configure_logging(verbose)
    say = _say(quiet)
    labels_path = labels_path if labels_path is not None else model_path.parent / LABELS_NAME
    out_dir = out_dir if out_dir is not None else model_path.parent
    try:
        require_packages("edge-convert", CONVERT_PACKAGES)  # a device install: say so before any work
        if needs_calibration(variants):
            check_calibration_size(calibration_size)
        say(f"Loading {model_path}")
        model = load_keras_model(model_path)
        labels = load_labels_for(model, labels_path)
        spec = training_spec(model_path, model)  # the input size and scaling the model was trained with
        train_images, train_available, data_source, chosen_seed, smoke_source = None, None, None, seed, None
        if needs_calibration(variants):
            choice = resolve_data(model_path, data, seed)
            say(f"Loading calibration data: {choice.describe()}")
            # Only the drawn images are decoded: the same draw over the split's files as over its images.
            dataset = load_data(choice, quiet=quiet, splits=("train",), spec=spec,
                                pick=lambda split, count: calibration_indices(count, calibration_size, choice.seed))
            train_images, data_source, chosen_seed = dataset.train_images, dataset.source, choice.seed
            train_available = dataset.train_available
            smoke_source = smoke_source_of(dataset)  # the smoke-test image is one of these files
            if list(dataset.class_names) != labels:
                click.echo(f"warning: calibrating on {dataset.source}, whose classes "
                           f"({', '.join(dataset.class_names)}) are not the model's labels", err=True)
        result = convert_model(model_path, out_dir, labels_path=labels_path, variants=variants,
                               train_images=train_images, calibration_size=calibration_size, seed=chosen_seed, spec=spec,
                               data_source=data_source, model=model, clip_logits=not minmax_logits,
                               progress=say, train_available=train_available, smoke_source=smoke_source)
    except EdgeError as error:
        raise click.ClickException(str(error)) from error
    except OSError as error:  # e.g. an output folder that cannot be written
        raise click.ClickException(_os_error_line(error)) from error
    for converted in result.models:
        say(f"{converted.variant:8s} {converted.path}  {converted.size:,} bytes  sha256 {converted.sha256}")


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="The artifacts folder: model.keras, the .tflite files and manifest.json are read there, "
                   "report.md, report.json and the pictures written there.  "
                   f"[default: {DEFAULT_ARTIFACTS}, or --model's folder]")
@click.option("--model", "model_path", type=click.Path(path_type=Path), default=None,
              help=f"The Keras model (the reference).  [default: {KERAS_MODEL_NAME} in --out]")
@click.option("--data", default=None, help="Data set whose TEST split is evaluated.  [default: training.json's]")
@click.option("--seed", type=int, default=None,
              help="Seed that draws the --max-images sample (the train/test split always follows training.json).  "
                   "[default: training.json's]")
@click.option("--max-drop", type=click.FloatRange(min=0), default=None,
              help="Exit 1 when int8 loses more than this many percentage points of accuracy against Keras.")
@click.option("--min-agreement", type=click.FloatRange(0, 100), default=None,
              help="Exit 1 when int8's top-1 agreement with Keras is below this percentage.")
@click.option("--max-images", type=click.IntRange(min=1), default=None,
              help="Evaluate only this many test images, drawn with the seed (for a quick look).")
@click.option("--quiet", "-q", is_flag=True, help="Only the table and errors.")
@click.option("--verbose", "-v", is_flag=True, help="Also debug logs, TensorFlow's own output among them.")
def report_main(out_dir: Path | None, model_path: Path | None, data: str | None, seed: int | None,
                max_drop: float | None, min_agreement: float | None, max_images: int | None, quiet: bool,
                verbose: bool) -> None:
    """Evaluate Keras and every .tflite model on the test set; write report.md, report.json and pictures."""
    from .report import build_report, sample_indices, threshold_failures, tflite_models
    from .report_render import terminal_summary, write_report

    _configure_logging(verbose)
    say = _say(quiet)
    if out_dir is None:
        out_dir = model_path.parent if model_path is not None else DEFAULT_ARTIFACTS
    if model_path is None:
        model_path = out_dir / KERAS_MODEL_NAME
    try:
        require_packages("edge-report", TRAIN_EXTRA_PACKAGES)
        check_keras_file(model_path)  # a missing model says "train first", before "convert first"
        models = tflite_models(out_dir, model_path)
        say(f"Loading {model_path}")
        keras_model = load_keras_model(model_path)
        choice = resolve_data(model_path, data, seed)
        say(f"Loading test data: {choice.describe()}")
        spec = training_spec(model_path, keras_model)
        # With --max-images only the sampled test files are decoded (the same draw as over the decoded images).
        pick = None if max_images is None else (lambda split, count: sample_indices(count, max_images, choice.seed))
        dataset = load_data(choice, quiet=quiet, splits=("test",), spec=spec, pick=pick)
        report = build_report(keras_model, models, dataset.test_images, dataset.test_labels,
                              dataset.class_names, test_paths=dataset.test_paths, data_source=dataset.source,
                              seed=choice.seed, keras_sha256=sha256_file(model_path), spec=spec, progress=say)
        failures = threshold_failures(report, max_drop, min_agreement)
        files = write_report(report, out_dir, failures=failures)
    except EdgeError as error:
        raise click.ClickException(str(error)) from error
    except OSError as error:  # e.g. an output folder that cannot be written
        raise click.ClickException(_os_error_line(error)) from error
    click.echo(terminal_summary(report), nl=False)
    for note in report.notes:
        click.echo(f"note: {note}", err=True)
    say(f"Wrote {files.markdown} and {files.json}")
    if failures:
        raise click.ClickException("; ".join(failures))


def module_main(argv: list[str] | None = None) -> None:
    """`python -m converter.cli [...]` is edge-convert; `python -m converter.cli report [...]` is edge-report."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == [REPORT_COMMAND]:
        report_main(args=args[1:], prog_name="edge-report")
    else:
        main(args=args, prog_name="edge-convert")


if __name__ == "__main__":
    module_main()
