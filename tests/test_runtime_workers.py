"""`edge-classify` over several worker processes and in batches: the same lines in the same order
as one process classifying one image at a time, bad files in place, Ctrl-C, a model whose batch
cannot be resized, a worker that dies (noticed at once, what it sent before still written), the
small-job path that starts no worker, and the per-file shortcuts of a folder run (small JPEGs read
in one call and opened by the JPEG reader, one argmax per batch) giving exactly what the
long way gives."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

import edge_runtime.cli as cli_module
import edge_runtime.workers as workers_module
from edge_runtime.batch import BatchSummary, best_classes
from edge_runtime.classify import Classifier, top_classes
from edge_runtime.cli import main
from edge_runtime.errors import ImageError
from edge_runtime.preprocess import DEFAULT_SPEC, SMALL_JPEG_BYTES, load_image, open_image, prepare_image
from edge_runtime.sources.files import expand_inputs
from edge_runtime.workers import ClassifierSettings, OutputSettings, WorkerPool, start_method
from PIL import Image
from runtime_fixtures import bad_files, ctrl_c_as_in_a_terminal
from synthetic import synthetic_arrays

pytest_plugins = ("runtime_fixtures",)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONSOLE_SCRIPT = "import sys; from edge_runtime.cli import main; sys.exit(main())"
FLOAT_TOLERANCE = 1e-6
TEST_IMAGES = 80  # split_dataset's test split
TRAIN_IMAGES = 240
BATCH = 8


def run(*args: str | os.PathLike) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args])


@pytest.fixture
def pool_for_every_job(monkeypatch: pytest.MonkeyPatch) -> None:
    """Let the CLI start workers however few the files (the threshold is measured for real photos)."""
    monkeypatch.setattr(cli_module, "SMALL_JOB_FILES", 1)


@pytest.fixture
def verbose_log():
    """Restore the package logger that -v configures, after the test."""
    package_logger = logging.getLogger("edge_runtime")
    saved = (package_logger.level, list(package_logger.handlers))
    yield
    package_logger.setLevel(saved[0])
    package_logger.handlers[:] = saved[1]


@pytest.fixture
def mixed_inputs(split_dataset: Path, tmp_path: Path) -> list[Path]:
    """Good images with every kind of bad file and a missing path between them."""
    bad = bad_files(tmp_path / "bad")
    bad_paths = [path for path, _ in bad.values()]
    test_root = split_dataset / "test"
    return [test_root / "circle", bad_paths[0], test_root / "cross", *bad_paths[1:4], tmp_path / "missing.jpg",
            test_root / "stripes", *bad_paths[4:], test_root / "waves"]


def records_of(result: Result) -> list[dict]:
    """The JSON records without their latency (the one field that differs from run to run)."""
    records = [json.loads(line) for line in result.stdout.splitlines()]
    for record in records:
        record.pop("latency_ms", None)
    return records


def assert_same_records(records: list[dict], expected: list[dict], exact: bool) -> None:
    assert [r["path"] for r in records] == [r["path"] for r in expected]
    for record, reference in zip(records, expected):
        assert record.keys() == reference.keys()
        if "error" in reference:
            assert record["error"] == reference["error"]
            continue
        assert [c["label"] for c in record["top_k"]] == [c["label"] for c in reference["top_k"]]
        if exact:
            assert record == reference
        else:
            assert np.allclose([c["score"] for c in record["top_k"]], [c["score"] for c in reference["top_k"]],
                               atol=FLOAT_TOLERANCE)


# --- the same answers in the same order ---------------------------------------------------------

@pytest.mark.parametrize("kind", ["int8", "float32"])
def test_workers_and_batches_give_the_same_lines_in_the_same_order(runtime_models, mixed_inputs, kind: str,
                                                                    pool_for_every_job) -> None:
    model = getattr(runtime_models, kind)
    single = run("--model", model, "--json", "--top-k", "2", "--workers", "1", *mixed_inputs)
    assert single.exit_code == 1  # the bad files
    expected = records_of(single)
    assert sum("error" in r for r in expected) == 7 and len(expected) == TEST_IMAGES + 7
    for workers, batch in ((1, BATCH), (2, 1), (2, BATCH), (3, 5)):
        result = run("--model", model, "--json", "--top-k", "2", "--workers", workers, "--batch", batch,
                     *mixed_inputs)
        assert result.exit_code == 1, (workers, batch, result.output)
        assert_same_records(records_of(result), expected, exact=kind == "int8")
        summary = result.stderr.strip().splitlines()[-1]
        assert summary.startswith(f"classified {TEST_IMAGES} of {TEST_IMAGES + 7} inputs in ")
        assert summary.endswith("; 7 failed")


def test_text_output_keeps_error_lines_in_place_with_workers(runtime_models, mixed_inputs, pool_for_every_job) -> None:
    single = run("--model", runtime_models.int8, "--workers", "1", *mixed_inputs)
    parallel = run("--model", runtime_models.int8, "--workers", "2", "--batch", BATCH, *mixed_inputs)
    assert parallel.exit_code == single.exit_code == 1
    assert parallel.stdout == single.stdout
    errors = [line for line in parallel.stderr.splitlines() if ": error: " in line]
    assert errors == [line for line in single.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 7


def test_a_batch_gives_the_scores_of_its_images_one_by_one(runtime_models, synthetic_test_images) -> None:
    images = synthetic_test_images[0][:11]
    for model, exact in ((runtime_models.int8, True), (runtime_models.float32, False)):
        single = Classifier(model)
        expected = np.stack([single.scores(image) for image in images])
        batched = Classifier(model)
        assert batched.batch_resizable and batched.use_batches(4) == 4
        for start in range(0, len(images), 4):  # the last batch holds 3 of 4
            scores = batched.scores_batch(images[start:start + 4])
            assert scores.shape == (min(4, len(images) - start), 4)
            reference = expected[start:start + 4]
            assert np.array_equal(scores, reference) if exact else np.allclose(scores, reference,
                                                                              atol=FLOAT_TOLERANCE)


# --- a model whose batch cannot be resized ------------------------------------------------------

def test_a_fixed_batch_model_is_classified_one_image_at_a_time(runtime_models, mixed_inputs, pool_for_every_job,
                                                              synthetic_test_images) -> None:
    classifier = Classifier(runtime_models.fixed_batch_int8)
    assert not classifier.batch_resizable and classifier.use_batches(BATCH) == 1
    images = synthetic_test_images[0][:3]
    assert np.array_equal(classifier.scores_batch(images), np.stack([classifier.scores(i) for i in images]))
    expected = records_of(run("--model", runtime_models.int8, "--json", "--workers", "1", *mixed_inputs))
    for workers in (1, 2):
        result = run("--model", runtime_models.fixed_batch_int8, "--json", "--workers", workers, "--batch", BATCH,
                     *mixed_inputs)
        assert result.exit_code == 1
        assert result.stderr.splitlines()[0] == (f"note: {runtime_models.fixed_batch_int8} has a fixed batch size "
                                                 f"of 1; --batch {BATCH} is not used")
        assert_same_records(records_of(result), expected, exact=True)  # same network, same weights
    quiet = run("--model", runtime_models.fixed_batch_int8, "--json", "--workers", "2", *mixed_inputs)
    assert not quiet.stderr.startswith("note:")  # the default batch is not worth a note


# --- small jobs ---------------------------------------------------------------------------------

def test_small_jobs_stay_in_this_process_and_large_ones_use_the_workers(runtime_models, split_dataset: Path,
                                                                        monkeypatch, verbose_log) -> None:
    test_root = split_dataset / "test"
    monkeypatch.setattr(cli_module, "SMALL_JOB_FILES", TEST_IMAGES + 1)
    small = run("-v", "--model", runtime_models.int8, "--json", "-r", "--workers", "2", test_root)
    assert small.exit_code == 0
    assert "edge_runtime.cli: classifying in this process, 1 image(s) per invoke" in small.stderr
    assert "worker processes" not in small.stderr
    monkeypatch.setattr(cli_module, "SMALL_JOB_FILES", TEST_IMAGES)
    large = run("-v", "--model", runtime_models.int8, "--json", "-r", "--workers", "2", test_root)
    assert large.exit_code == 0
    assert "edge_runtime.cli: classifying in 2 worker processes (pids " in large.stderr
    assert f"), {cli_module.DEFAULT_BATCH} image(s) per invoke" in large.stderr
    assert records_of(large) == records_of(small)


def test_one_photo_imports_nothing_of_the_pool(runtime_models, split_dataset: Path) -> None:
    photo = split_dataset / "test" / "cross" / "0003.png"
    code = ("import atexit, sys; atexit.register(lambda: print(sorted(m for m in ('multiprocessing', "
            "'edge_runtime.workers') if m in sys.modules))); " + CONSOLE_SCRIPT)
    output = subprocess.run([sys.executable, "-c", code, "--model", str(runtime_models.int8), str(photo)],
                            capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert output.stdout.splitlines() == [f"{photo}: cross " + output.stdout.split(" cross ")[1].splitlines()[0],
                                          "[]"]


def test_workers_and_batch_only_apply_to_image_inputs() -> None:
    for option in ("--workers", "--batch"):
        result = run(option, "2", "--camera")
        assert result.exit_code == 2
        assert result.stderr.strip().splitlines()[-1] == f"Error: {option} only applies to image inputs"
    assert "Error: Invalid value for '--workers'" in run("--workers", "0", "x.jpg").stderr


# --- interruption and lost workers --------------------------------------------------------------

def test_a_stop_request_ends_the_run_between_chunks_and_ends_every_worker(runtime_models,
                                                                         split_dataset: Path) -> None:
    import io

    items = list(expand_inputs([str(split_dataset / "train")], recursive=True))
    out, err = io.StringIO(), io.StringIO()
    summary = BatchSummary()
    settings = ClassifierSettings(str(runtime_models.int8), batch=4)
    with WorkerPool(settings, OutputSettings(as_json=True), workers=2) as pool:
        pids = pool.pids
        pool.run(items, out, err, summary, chunk_size=4,
                 stop_requested=lambda: len(out.getvalue().splitlines()) >= 12)
        pool.terminate()
    assert summary.interrupted
    lines = out.getvalue().splitlines()
    assert len(lines) == summary.classified == 12  # whole chunks only, each counted
    assert [json.loads(line)["path"] for line in lines] == [item.path for item in items[:12]]
    time.sleep(0.1)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except OSError:
        return True


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="checks worker processes through /proc")
def test_ctrl_c_stops_every_worker_and_prints_the_summary(runtime_models, split_dataset: Path) -> None:
    train = str(split_dataset / "train")
    inputs = [train] * 40  # 9,600 images: still running when the first block of lines arrives
    process = subprocess.Popen([sys.executable, "-c", CONSOLE_SCRIPT, "-v", "--model", str(runtime_models.int8),
                                "--json", "-r", "--workers", "2", "--batch", "1", *inputs],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO_ROOT,
                               preexec_fn=ctrl_c_as_in_a_terminal)
    first = os.read(process.stdout.fileno(), 1 << 16)  # the first block of lines
    process.send_signal(signal.SIGINT)
    rest, stderr_bytes = process.communicate(timeout=60)
    stderr = stderr_bytes.decode()
    assert process.returncode == 130, stderr
    summary = stderr.strip().splitlines()[-1]
    assert summary.startswith("interrupted after ") and "Traceback" not in stderr
    count = int(summary.split()[2])
    assert summary.startswith(f"interrupted after {count} inputs: {count} classified in ")
    lines = (first + rest).decode().splitlines()
    assert 0 < len(lines) == count < len(inputs) * TRAIN_IMAGES  # whole lines, exactly those counted
    expected = [item.path for item in expand_inputs([train], recursive=True)]
    assert [json.loads(line)["path"] for line in lines] == (expected * 40)[:count]
    pids = [int(pid) for pid in stderr.split("worker processes (pids ")[1].split(")")[0].split()]
    assert len(pids) == 2
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


@pytest.mark.skipif(start_method() != "fork", reason="the crash is planted through a forked worker's memory")
def test_a_worker_that_dies_costs_its_chunk_only(runtime_models, split_dataset: Path, monkeypatch,
                                                 pool_for_every_job) -> None:
    files = sorted((split_dataset / "test").rglob("*.png"))
    victim = files[50]  # well after both workers have answered once
    _kill_on(victim, monkeypatch)
    result = run("--model", runtime_models.int8, "--json", "--workers", "2", "--batch", "4", *files)
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(f) for f in files]
    lost = [r for r in records if "error" in r]
    assert str(victim) in {r["path"] for r in lost} and len(lost) <= 4 * workers_module.IN_FLIGHT_PER_WORKER
    assert all(r["error"] == "not classified: the worker process reading it stopped (killed by SIGKILL)"
               for r in lost)
    assert result.stderr.strip().endswith(f"; {len(lost)} failed")


def _kill_on(victim: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the worker that reads `victim` die as a native crash would."""
    original = Classifier.load

    def load(classifier: Classifier, path):
        if str(path) == str(victim):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(classifier, path)

    monkeypatch.setattr(Classifier, "load", load)


@pytest.mark.skipif(start_method() != "fork", reason="the crash is planted through a forked worker's memory")
def test_a_dead_worker_is_noticed_at_once_not_at_the_next_look_at_the_stop_flag(runtime_models, split_dataset: Path,
                                                                                monkeypatch, pool_for_every_job) -> None:
    """Its process sentinel wakes the parent: no waiting for the other workers to fall silent."""
    files = sorted((split_dataset / "test").rglob("*.png"))
    _kill_on(files[50], monkeypatch)
    slow_poll = 300.0  # the run would take at least this long if the death waited for a timeout
    monkeypatch.setattr(workers_module, "STOP_POLL_S", slow_poll)
    started = time.monotonic()
    result = run("--model", runtime_models.int8, "--json", "--workers", "2", "--batch", "4", *files)
    assert time.monotonic() - started < slow_poll / 5
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(f) for f in files]
    assert 0 < sum("error" in r for r in records) <= 4 * workers_module.IN_FLIGHT_PER_WORKER


@pytest.mark.skipif(start_method() != "fork", reason="the crash is planted through a forked worker's memory")
def test_answers_a_worker_sent_before_it_died_are_written(runtime_models, split_dataset: Path, monkeypatch,
                                                          pool_for_every_job) -> None:
    """The worker answering chunk 2 dies the moment its answer is sent: the answer is written, only the
    chunks it still held (or was given before its death was seen) are reported lost."""
    files = sorted((split_dataset / "test").rglob("*.png"))
    chunk, answered_then_died = 4, 2
    original = workers_module.send_answer

    def send_then_die(results, message) -> bool:
        sent = original(results, message)
        if message[0] == answered_then_died:
            os.kill(os.getpid(), signal.SIGKILL)
        return sent

    monkeypatch.setattr(workers_module, "send_answer", send_then_die)
    result = run("--model", runtime_models.int8, "--json", "--workers", "2", "--batch", chunk, *files)
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(f) for f in files]
    first = answered_then_died * chunk
    assert all("label" in r for r in records[first:first + chunk])
    lost = [r for r in records if "error" in r]
    assert 0 < len(lost) <= chunk * workers_module.IN_FLIGHT_PER_WORKER
    assert all(r["error"] == "not classified: the worker process reading it stopped (killed by SIGKILL)"
               for r in lost)


# --- the per-file shortcuts of a folder run -----------------------------------------------------

def _pillow_reading(path: Path) -> np.ndarray | str:
    """The model input (or the error message) when Pillow opens and reads the file itself."""
    try:
        image = open_image(path)
        with image:
            return prepare_image(image, DEFAULT_SPEC, name=str(path))
    except ImageError as error:
        return str(error)


def _jpeg_declaring(picture: Image.Image, width: int, height: int) -> bytes:
    """A small baseline JPEG whose frame header (SOF0) declares width x height pixels."""
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=90)
    data = bytearray(buffer.getvalue())
    frame = data.index(b"\xff\xc0")
    data[frame + 5:frame + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    return bytes(data)


def test_small_jpegs_are_opened_from_one_read_with_the_pixels_and_errors_of_pillows_own_reading(tmp_path: Path,
                                                                                              monkeypatch) -> None:
    """Small JPEGs skip `Image.open`; every other file, and every small JPEG that would make Pillow warn
    or fail, still goes through it: the same model input or the same error line either way."""
    folder = tmp_path / "files"
    folder.mkdir()
    picture = Image.fromarray(synthetic_arrays(1, seed=5, size=48)[0][0])
    picture.save(folder / "small.jpg", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: the orientation must still be applied
    picture.crop((0, 0, 48, 40)).save(folder / "rotated.JPEG", quality=90, exif=exif)
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "photo.jpg", quality=95)
    picture.save(folder / "png.jpg", format="PNG")  # named as a JPEG, but is not one
    picture.save(folder / "small.png")
    (folder / "bomb.jpg").write_bytes(_jpeg_declaring(picture, 50_000, 50_000))  # 2.5 GP in 2 KB
    (folder / "header.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not a JPEG header" * 4)
    assert (folder / "photo.jpg").stat().st_size > SMALL_JPEG_BYTES
    bad = {name: path for name, (path, _) in bad_files(tmp_path / "bad").items()}
    shortcut = [folder / "small.jpg", folder / "rotated.JPEG", bad["truncated_jpeg"]]
    long_way = [folder / "photo.jpg", folder / "png.jpg", folder / "small.png", folder / "bomb.jpg",
                folder / "header.jpg", bad["empty"], bad["text"], bad["folder"], bad["truncated_png"],
                tmp_path / "missing.jpg"]
    expected = {path: _pillow_reading(path) for path in shortcut + long_way}
    assert isinstance(expected[folder / "rotated.JPEG"], np.ndarray)
    assert expected[bad["truncated_jpeg"]].startswith(f"{bad['truncated_jpeg']}: cannot decode image (image file "
                                                     "is truncated (")
    assert expected[folder / "bomb.jpg"] == (f"{folder / 'bomb.jpg'}: declares too many pixels to decode safely "
                                             "(possible decompression bomb)")
    assert expected[folder / "header.jpg"].startswith(f"{folder / 'header.jpg'}: cannot read (")
    original_open = Image.open
    through_image_open: list[Path] = []

    def recording_open(source, *args, **kwargs):
        through_image_open.append(current)
        return original_open(source, *args, **kwargs)

    monkeypatch.setattr(Image, "open", recording_open)
    for current in shortcut + long_way:
        try:
            answer: np.ndarray | str = load_image(current, DEFAULT_SPEC)
        except ImageError as error:
            answer = str(error)
        if isinstance(expected[current], str):
            assert answer == expected[current]
        else:
            assert np.array_equal(answer, expected[current]), current
    assert through_image_open == long_way


def test_the_best_class_of_each_image_of_a_batch_is_top_classes_of_its_row() -> None:
    nan = float("nan")
    scores = np.array([[0.1, 0.7, 0.2], [0.4, 0.4, 0.2], [nan, 0.2, 0.3], [0.1, nan, 0.9], [-0.5, -0.2, -0.9],
                       [0.0, 0.0, 0.0], [0.2, 0.3, 0.5]], dtype=np.float32)
    for labels in (["a", "b", "c"], ["a"], None):
        best = best_classes(scores, labels)
        assert best == [top_classes(row, labels, 1) for row in scores]
        assert [len(classes) for classes in best] == [1, 1, 0, 0, 0, 1, 1]  # NaN or negative: no class
        assert all(type(c.score) is float for classes in best for c in classes)


# --- bounded memory and set-up failures ---------------------------------------------------------

def test_the_file_list_is_drawn_only_a_few_chunks_ahead_of_the_output(runtime_models, split_dataset: Path) -> None:
    items = list(expand_inputs([str(split_dataset / "train")], recursive=True))
    drawn = []

    def stream():
        for item in items:
            drawn.append(item)
            yield item

    class Out:
        """Records, at every write, how many items had been drawn beyond the lines written."""

        def __init__(self) -> None:
            self.lines = 0
            self.ahead: list[int] = []

        def write(self, text: str) -> None:
            self.lines += text.count("\n")
            self.ahead.append(len(drawn) - self.lines)

        def flush(self) -> None:
            pass

    out, workers, chunk = Out(), 2, 4
    summary = BatchSummary()
    with WorkerPool(ClassifierSettings(str(runtime_models.int8), batch=chunk), OutputSettings(as_json=True),
                    workers) as pool:
        pool.run(stream(), out, sys.stderr, summary, chunk_size=chunk)
    assert out.lines == summary.classified == TRAIN_IMAGES
    assert max(out.ahead) <= workers * workers_module.IN_FLIGHT_PER_WORKER * chunk
    assert len(out.ahead) == TRAIN_IMAGES // chunk  # one write per chunk, none held back to the end


@pytest.mark.skipif(start_method() != "fork", reason="the failure is planted through a forked worker's memory")
def test_a_worker_that_cannot_build_its_classifier_stops_the_run_with_one_line(runtime_models, split_dataset: Path,
                                                                               monkeypatch, pool_for_every_job) -> None:
    from edge_runtime.errors import ModelError

    def build(settings):
        raise ModelError(f"{settings.model_path}: cannot read the model file (Permission denied)")

    monkeypatch.setattr(ClassifierSettings, "build", build)
    result = run("--model", runtime_models.int8, "--json", "-r", "--workers", "2", split_dataset / "test")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (f"Error: {runtime_models.int8}: cannot read the model file "
                                                      "(Permission denied)")
    assert "Traceback" not in result.output
