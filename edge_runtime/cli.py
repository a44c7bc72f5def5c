"""`edge-classify`: classify image files, folders or camera frames with a TFLite model, without TensorFlow.

A thin shell over the library: it parses options, picks the model, builds one Classifier and
hands it to `batch.classify_files`, `live_run.run_live` (camera frames), `bench.benchmark_model` or
`info.model_facts`; SMALL_JOB_FILES files or more go to `workers`, whose processes build their
own. Exit codes: 0 when everything asked for was done, 1 when some input could not be classified
(the others still were) or a model differs from its manifest, 2 for a bad model, backend or
command line, 130 on Ctrl-C during a file run.

Only what a run needs is imported, when it needs it: `edge-classify photo.jpg` loads numpy,
Pillow, click and one interpreter package, and nothing from TensorFlow or OpenCV.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Callable, Iterable, NamedTuple, TextIO

import click

from . import __version__
from .cli_live import LIVE_PARAMETERS, check_live_options, live_options, live_run_options
from .errors import EdgeError
from .interpreter import BACKEND_ORDER
from .model_file.choose import MODEL_ENV_VAR, MODEL_SUFFIX

if TYPE_CHECKING:  # for annotations only: the modules themselves load when a run needs them
    from .batch import BatchSummary
    from .classify import Classifier
    from .live_run import LiveOptions
    from .preprocess import Normalization
    from .sources.files import InputItem

EXIT_OK = 0
EXIT_INPUT_FAILED = 1
EXIT_FATAL = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
DEFAULT_MODEL = ""  # the value of a bare --info / --benchmark: use the model resolution order
CAMERA_AUTO = "auto"
PACKAGE_LOGGER = "edge_runtime"
# Images per invoke in the worker processes, where the model's batch dimension can be resized.
# (8 to 32 did equally well on CIFAR-10 JPEGs in 2 workers, 64 and 128 worse; measured on a loaded
# 2-core machine, so only the ranking is worth anything.)
DEFAULT_BATCH = 32
# Fewer files than this are classified in this process: starting the workers would cost more
# than they save. bench_runtime.py's small-job comparison measures where they start to pay. So
# far only on a 2-core machine loaded by trainings, which is noisy: one run had 2 workers slower
# up to 200 CIFAR-10 JPEGs and faster from 400; a run under heavier load, slower still at 400.
SMALL_JOB_FILES = 300

# OpenBLAS, numpy's BLAS, reads its thread count from this when numpy is imported (see _one_blas_thread).
BLAS_THREADS_VARIABLE = "OPENBLAS_NUM_THREADS"

logger = logging.getLogger(__name__)


class FatalError(click.ClickException):
    """A problem that stops the whole run (bad model, backend or options): exit code 2, one line."""

    exit_code = EXIT_FATAL


class RunFailed(click.ClickException):
    """The run went ahead but something asked for failed (a lost camera): exit code 1."""

    exit_code = EXIT_INPUT_FAILED


def _one_blas_thread() -> None:
    """Ask numpy's BLAS for one thread, unless the user has said otherwise; before numpy is imported.

    edge-classify does no linear algebra, but OpenBLAS starts a thread per core when numpy is
    imported, and those threads spin while they wait: on a 2-core VM they cost a single photo about
    a fifth of its CPU time (BENCHMARKS.md, cold start), and they compete with the interpreter and
    with the worker processes (which inherit the setting) for the cores. Only this command's
    processes see it.
    """
    os.environ.setdefault(BLAS_THREADS_VARIABLE, "1")


def _make_classifier(model_option: str | None, threads: int, backend: str | None,
                     labels: str | None, normalization: Normalization | None = None) -> tuple[Classifier, str | None]:
    """Find the model and build the one Classifier of this run; model problems are fatal.

    Returns the classifier and, when the model was picked among several, why (else None).
    """
    from .classify import Classifier
    from .model_file.choose import choose_model

    try:
        model_path, choice_reason = choose_model(model_option)
        if choice_reason:
            logger.debug("%s", choice_reason)
        classifier = Classifier(model_path, threads=threads, backend=backend, labels_path=labels,
                                normalization=normalization)
    except EdgeError as error:
        raise FatalError(str(error)) from error
    logger.debug("model %s: backend %s, %s thread(s), labels from %s, input %s %s", model_path,
                 classifier.backend, threads, classifier.labels_source, list(classifier.input.shape),
                 classifier.input.dtype.name)
    if labels is not None and classifier.labels_from_model:
        where = "" if classifier.labels_source == "embedded" else f" ({classifier.labels_source})"
        click.echo(f"note: {model_path} carries its own labels{where}; --labels {labels} is not used", err=True)
    if classifier.notice:
        click.echo(f"note: {classifier.notice}", err=True)
    return classifier, choice_reason


class FileRun(NamedTuple):
    """How a file run classifies: the options that shape the output and the use of the CPUs."""

    as_json: bool
    top_k: int
    threshold: float
    workers: int | None  # None: one per CPU
    batch: int | None  # None: DEFAULT_BATCH in the workers, one image per invoke in this process
    labels: str | None
    normalization: Normalization | None


def _check_output_folder(output: str) -> None:
    """Refuse, before any work, an --output whose folder does not exist (it is not created)."""
    from pathlib import Path

    folder = Path(output).parent
    if not folder.exists():
        raise FatalError(f"{output}: cannot write results (folder {folder} does not exist)")
    if not folder.is_dir():
        raise FatalError(f"{output}: cannot write results ({folder} is not a folder)")


def _run_files(classifier: Classifier, inputs: tuple[str, ...], recursive: bool, run: FileRun,
               output: str | None) -> int:
    from .output import display_path, result_stream
    from .sources.files import PassedOver, expand_inputs, passed_over_notes

    passed_over: list[PassedOver] = []
    items = expand_inputs(inputs, recursive=recursive, passed_over=passed_over)
    if output is None:
        summary = _classify_to(result_stream(sys.stdout), classifier, items, run)
    else:
        from .atomic import atomic_path  # tempfile and its imports: only when writing a file

        try:
            with atomic_path(output) as temporary:
                with open(temporary, "w", encoding="utf-8") as stream:
                    summary = _classify_to(stream, classifier, items, run)
        except OSError as error:
            raise FatalError(f"{output}: cannot write results ({error.strerror or error})") from error
    for note in passed_over_notes(passed_over, errors_shown=not run.as_json):
        click.echo(f"note: {display_path(note)}", err=True)
    if summary.total > 1 or summary.interrupted:
        click.echo(summary.line(), err=True)
    if summary.interrupted:
        return EXIT_INTERRUPTED
    return EXIT_INPUT_FAILED if summary.failed else EXIT_OK


def _classify_to(stream: TextIO, classifier: Classifier, items: Iterable[InputItem], run: FileRun) -> BatchSummary:
    """Classify in this process, or in worker processes when there are enough files to gain from them."""
    workers = run.workers if run.workers is not None else _default_workers()
    head: list[InputItem] = []
    if workers > 1:
        # Look ahead only as far as the decision needs: the rest of the list stays a stream.
        iterator = iter(items)
        head = list(itertools.islice(iterator, SMALL_JOB_FILES))
        items = itertools.chain(head, iterator)
    if workers > 1 and len(head) >= SMALL_JOB_FILES:
        summary = _classify_in_workers(stream, classifier, items, run, workers)
    else:
        summary = _classify_here(stream, classifier, items, run)
    stream.flush()
    return summary


def _default_workers() -> int:
    """The CPUs this process may run on (its affinity where the platform says), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _batch_size(classifier: Classifier, requested: int | None, default: int) -> int:
    """The images per invoke: what was asked (or `default`) where the model's batch can be resized, else 1."""
    size = requested if requested is not None else default
    if size > 1 and not classifier.batch_resizable:
        logger.debug("one image per invoke: %s has a fixed batch size (input shape %s)", classifier.model_path,
                     list(classifier.input.shape))
        if requested is not None:
            click.echo(f"note: {classifier.model_path} has a fixed batch size of 1; --batch {requested} is not "
                       "used", err=True)
        return 1
    return size


def _classify_here(stream: TextIO, classifier: Classifier, items: Iterable[InputItem], run: FileRun) -> BatchSummary:
    from .batch import classify_files
    from .errors import ModelError
    from .output import make_writer

    try:
        classifier.use_batches(_batch_size(classifier, run.batch, 1))
    except ModelError as error:
        raise FatalError(str(error)) from error
    logger.debug("classifying in this process, %d image(s) per invoke", classifier.batch_size)
    writer = make_writer(run.as_json, stream, sys.stderr)
    try:
        return classify_files(classifier, items, writer, top_k=run.top_k, threshold=run.threshold)
    except ModelError as error:  # the model failed to run: one line for the run, no file blamed
        stream.flush()  # the lines of any files classified before it
        raise FatalError(str(error)) from error


def _classify_in_workers(stream: TextIO, classifier: Classifier, items: Iterable[InputItem], run: FileRun,
                         workers: int) -> BatchSummary:
    from .workers import CHUNK_FILES, ClassifierSettings, OutputSettings, classify_files_parallel

    batch = _batch_size(classifier, run.batch, DEFAULT_BATCH)
    settings = ClassifierSettings(model_path=str(classifier.model_path), threads=classifier.threads or 1,
                                  backend=classifier.backend, labels_path=run.labels,
                                  normalization=run.normalization, batch=batch)
    output = OutputSettings(as_json=run.as_json, top_k=run.top_k, threshold=run.threshold)

    def started(pids: list[int]) -> None:
        logger.debug("classifying in %d worker processes (pids %s), %d image(s) per invoke", len(pids),
                     " ".join(map(str, pids)), batch)

    try:
        return classify_files_parallel(settings, items, stream, sys.stderr, output, workers,
                                       chunk_size=batch if batch > 1 else CHUNK_FILES, on_start=started)
    except EdgeError as error:  # a worker could not start, or the model failed to run in one
        stream.flush()  # the lines written before it
        raise FatalError(str(error)) from error


def _run_camera(classifier: Classifier, options: LiveOptions, make_classifier: Callable[[], Classifier]) -> int:
    from .live_run import run_live
    from .sources.camera import CameraError

    def notify(message: str) -> None:
        click.echo(message, err=True)

    try:
        outcome = run_live(classifier, options, notify, make_classifier)
    except CameraError as error:  # the source cannot be opened
        raise RunFailed(str(error)) from error
    except EdgeError as error:  # no camera package, a model that cannot run, a bad -o file, folder or address
        raise FatalError(str(error)) from error
    click.echo(outcome.summary.line(), err=True)
    if outcome.saved_line:
        click.echo(outcome.saved_line, err=True)
    if outcome.summary.error is not None:
        raise RunFailed(outcome.summary.error)
    if outcome.save_error is not None:
        raise RunFailed(outcome.save_error)
    return EXIT_OK


def _run_info(classifier: Classifier, as_json: bool, choice_reason: str | None = None) -> int:
    """Print the model's facts, then run it once on a blank image: a model that loads but cannot
    run is a fact a user checks --info for (exit 2 and one line, after the facts)."""
    from .errors import ModelError
    from .info import facts_text, model_facts, run_once

    click.echo(facts_text(model_facts(classifier), as_json, choice_reason))
    try:
        run_once(classifier)
    except ModelError as error:
        raise FatalError(str(error)) from error
    return EXIT_OK


def _run_benchmark(model_option: str | None, threads: int, backend: str | None, runs: int,
                   as_json: bool) -> int:
    from .bench import benchmark_model
    from .model_file.choose import find_model

    try:
        result = benchmark_model(find_model(model_option), threads=threads, runs=runs, backend=backend)
    except EdgeError as error:
        raise FatalError(str(error)) from error
    click.echo(json.dumps(result.to_dict(), indent=2) if as_json else "\n".join(result.lines()))
    return EXIT_OK


def _run_verify(model: str, manifest: str | None) -> int:
    from .model_file.reader import ModelFile

    try:
        verification = ModelFile(model).verify(manifest)
    except EdgeError as error:
        raise FatalError(str(error)) from error
    click.echo(verification.message())
    return EXIT_OK if verification.ok else EXIT_INPUT_FAILED


def _check_combinations(inputs: tuple[str, ...], info: str | None, benchmark: str | None,
                        verify: str | None, camera: str | None, frames: int | None,
                        runs: int | None, manifest: str | None, output: str | None, recursive: bool,
                        workers: int | None = None, batch: int | None = None) -> None:
    """Refuse option combinations that would silently ignore part of what was asked."""
    modes = [name for name, value in (("--info", info), ("--benchmark", benchmark), ("--verify", verify),
                                      ("--camera", camera)) if value is not None]
    if inputs:
        modes.append("image inputs")
    if len(modes) > 1:
        raise click.UsageError(f"{' and '.join(modes)} cannot be used together")
    if not modes:
        raise click.UsageError("give an image file or folder to classify "
                               "(or --camera, --info, --benchmark or --verify)")
    for option, value, needs, needed in (("--frames", frames, "--camera", camera),
                                         ("--runs", runs, "--benchmark", benchmark),
                                         ("--manifest", manifest, "--verify", verify)):
        if value is not None and needed is None:
            raise click.UsageError(f"{option} only applies to {needs}")
    if output is not None and not inputs and camera is None:
        raise click.UsageError("--output only applies to image inputs and --camera")
    for option, given in (("--recursive", recursive), ("--workers", workers is not None),
                          ("--batch", batch is not None)):
        if given and not inputs:
            raise click.UsageError(f"{option} only applies to image inputs")
    models = [path for path in inputs if path.lower().endswith(MODEL_SUFFIX)]
    if models:
        import shlex

        images = [path for path in inputs if path not in models] or ["photo.jpg"]
        raise click.UsageError(f"{models[0]} is a model, not an image: give it with --model, e.g. "
                               f"edge-classify -m {shlex.quote(models[0])} "
                               f"{' '.join(shlex.quote(path) for path in images)}")


def _normalization_option(ctx: click.Context, param: click.Parameter, value: str | None) -> Normalization | None:
    """MEAN,STD (or three means and three stds, per channel) as a Normalization."""
    if value is None:
        return None
    from .preprocess import Normalization

    try:
        return Normalization.parse(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from error


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("inputs", nargs=-1, metavar="[INPUT]...")
@click.option("-m", "--model", "model_option", metavar="PATH",
              help=f"The .tflite model. Default: ${MODEL_ENV_VAR}, else the only .tflite file here.")
@click.option("--labels", metavar="FILE", help="Labels file for a model that carries none.")
@click.option("--normalization", metavar="MEAN,STD", callback=_normalization_option,
              help="Input values (pixel - MEAN) / STD, over what the model says or the conventions guess "
                   "(three means and three stds for per-channel values).")
@click.option("-k", "--top-k", default=1, show_default=True, type=click.IntRange(min=1),
              help="How many classes to show per image or frame.")
@click.option("-t", "--threshold", default=0.0, show_default=True, type=click.FloatRange(0.0, 1.0),
              help='Below this best score, say "uncertain".')
@click.option("--json", "as_json", is_flag=True, help="JSON lines (one object per image or frame) instead of text.")
@click.option("-o", "--output", metavar="FILE", help="Write the results to FILE instead of stdout (with --camera: appended).")
@click.option("-r", "--recursive", is_flag=True, help="Look for images in sub-folders too.")
@click.option("--workers", type=click.IntRange(min=1), metavar="N",
              help=f"Processes classifying files (default: one per CPU; 1 classifies in this process). "
                   f"Under {SMALL_JOB_FILES} files, always this process.")
@click.option("--batch", type=click.IntRange(min=1), metavar="N",
              help=f"Images per inference, where the model allows it (default: {DEFAULT_BATCH} in worker "
                   "processes, 1 in this process).")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(min=1),
              help="Interpreter threads (per worker).")
@click.option("--backend", type=click.Choice(BACKEND_ORDER),
              help="Interpreter package (default: the first installed, in this order).")
@click.option("--camera", is_flag=False, flag_value=CAMERA_AUTO, default=None, metavar="[SOURCE]",
              help="Classify live frames: the Pi camera, else OpenCV camera 0; or a camera index, "
                   "a video file or a stream URL.")
@click.option("--frames", "max_frames", type=click.IntRange(min=1), metavar="N",
              help="With --camera: stop after N frames.")
@live_options
@click.option("--info", "info_model", is_flag=False, flag_value=DEFAULT_MODEL, default=None,
              metavar="[MODEL]", help="Show the model's input, quantization, labels, size and sha256.")
@click.option("--benchmark", "benchmark_model", is_flag=False, flag_value=DEFAULT_MODEL, default=None,
              metavar="[MODEL]", help="Time initialisation, first inference and latency of the model.")
@click.option("--runs", type=click.IntRange(min=1), metavar="N",
              help="With --benchmark: inferences to time (default 200).")
@click.option("--verify", "verify_model", metavar="MODEL",
              help="Check MODEL's size and sha256 against its manifest.json.")
@click.option("--manifest", metavar="FILE", help="With --verify: the manifest (default: beside the model).")
@click.option("-v", "--verbose", is_flag=True, help="Log diagnostics to stderr.")
@click.version_option(__version__, "--version", prog_name="edge-classify")
def main(inputs: tuple[str, ...], model_option: str | None, labels: str | None,
         normalization: Normalization | None, top_k: int,
         threshold: float, as_json: bool, output: str | None, recursive: bool, workers: int | None,
         batch: int | None, threads: int,
         backend: str | None, camera: str | None, max_frames: int | None, info_model: str | None,
         benchmark_model: str | None, runs: int | None, verify_model: str | None,
         manifest: str | None, verbose: bool, **live: Any) -> None:
    """Classify images with a TFLite model: files, folders (-r for sub-folders) or a camera.

    \b
    edge-classify photo.jpg
    edge-classify --json -r photos/ > results.jsonl
    edge-classify --camera --frames 100
    edge-classify --camera --serve --save frames/ --save-when unsure:0.6
    edge-classify --info model.tflite
    """
    _one_blas_thread()
    if verbose:
        # This package's diagnostics only: Pillow's and the interpreter's debug chatter stays off.
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        package_logger = logging.getLogger(PACKAGE_LOGGER)
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.DEBUG)
    _check_combinations(inputs, info_model, benchmark_model, verify_model, camera, max_frames, runs, manifest,
                        output, recursive, workers, batch)
    check_live_options(camera, live["loop"], {name: live[name] for name in LIVE_PARAMETERS})
    if normalization is not None and (verify_model is not None or benchmark_model is not None):
        raise click.UsageError("--normalization only applies to classifying and --info")
    if verify_model is not None:
        sys.exit(_run_verify(verify_model, manifest))
    if benchmark_model is not None:
        from .bench import DEFAULT_RUNS

        sys.exit(_run_benchmark(benchmark_model or model_option, threads, backend, runs or DEFAULT_RUNS, as_json))
    if info_model is not None:
        classifier, choice_reason = _make_classifier(info_model or model_option, threads, backend, labels,
                                                     normalization)
        sys.exit(_run_info(classifier, as_json, choice_reason))
    if output is not None:
        _check_output_folder(output)
    classifier, _ = _make_classifier(model_option, threads, backend, labels, normalization)
    if camera is not None:
        options = live_run_options(camera, CAMERA_AUTO, max_frames, as_json, top_k, threshold, output, live)
        sys.exit(_run_camera(classifier, options, lambda: _make_classifier(model_option, threads, backend, labels,
                                                                            normalization)[0]))
    run = FileRun(as_json, top_k, threshold, workers, batch, labels, normalization)
    try:
        code = _run_files(classifier, inputs, recursive, run, output)
    except BrokenPipeError:
        # The reader went away (`edge-classify folder | head`): stop quietly, as Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = EXIT_BROKEN_PIPE
    sys.exit(code)


if __name__ == "__main__":
    main(prog_name="edge-classify")
