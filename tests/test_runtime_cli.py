"""`edge-classify`, the command: which model it uses, bad models, each model type and backend,
--info, --benchmark and --verify, usage errors and -v. Files and folders: test_runtime_cli_files.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from edge_runtime.model_file.choose import MODEL_ENV_VAR
from edge_runtime.model_file.manifest import write_manifest
from runtime_cli_fixtures import one_line_error, run
from synthetic import CLASS_NAMES

pytest_plugins = ("runtime_fixtures", "runtime_cli_fixtures")

MIN_ACCURACY = 0.9
MIN_TOP_SCORE = 0.5


# --- picking the model --------------------------------------------------------------------------

def test_photo_alone_uses_the_only_tflite_in_the_current_folder(runtime_models, photo, tmp_path: Path,
                                                               monkeypatch) -> None:
    shutil.copy(runtime_models.int8, tmp_path / "model.tflite")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    path, label = photo
    result = run(path)
    assert result.exit_code == 0, result.output
    shown_path, shown = result.stdout.strip().split(": ")
    assert shown_path == str(path)
    name, score = shown.split()
    assert name == label and float(score) >= MIN_TOP_SCORE
    assert result.stderr == ""  # nothing else for one image: not even the interpreter's INFO line


def test_a_model_given_as_an_input_is_pointed_to_the_model_option(tmp_path: Path) -> None:
    model = tmp_path / "model_int8.tflite"
    model.write_bytes(b"not read")
    result = run(model, "cat.jpg")
    assert result.exit_code == 2
    assert f"{model} is a model, not an image: give it with --model, e.g. edge-classify -m {model} cat.jpg" \
        in result.output
    assert "Traceback" not in result.output
    alone = run("model.tflite")
    assert alone.exit_code == 2 and "edge-classify -m model.tflite photo.jpg" in alone.output


def test_model_option_beats_environment_beats_current_folder(runtime_models, photo, tmp_path: Path,
                                                            monkeypatch) -> None:
    shutil.copy(runtime_models.dense_input, tmp_path / "other.tflite")  # would fail if it were used
    monkeypatch.chdir(tmp_path)
    env_result = run(photo[0], env={MODEL_ENV_VAR: str(runtime_models.int8)})
    assert env_result.exit_code == 0, env_result.output
    option_result = run("--model", runtime_models.int8, photo[0],
                        env={MODEL_ENV_VAR: str(tmp_path / "missing.tflite")})
    assert option_result.exit_code == 0, option_result.output
    folder_result = run(photo[0], env={MODEL_ENV_VAR: ""})
    assert folder_result.exit_code == 2
    assert "other.tflite: input tensor has shape [1, 10]" in folder_result.stderr


def test_no_model_anywhere_says_where_it_looked(photo, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    result = run(photo[0])
    assert result.exit_code == 2
    assert one_line_error(result) == (f"Error: no model given: looked for --model, ${MODEL_ENV_VAR} and a .tflite "
                                      f"file in {tmp_path} (none there)")


def test_two_models_in_the_folder_are_named(runtime_models, photo, tmp_path: Path, monkeypatch) -> None:
    shutil.copy(runtime_models.int8, tmp_path / "b.tflite")
    shutil.copy(runtime_models.float32, tmp_path / "a.tflite")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    result = run(photo[0])
    assert result.exit_code == 2
    assert one_line_error(result) == (f"Error: no model given and {tmp_path} holds 2 .tflite files (a.tflite, "
                                      f"b.tflite); choose one with --model or ${MODEL_ENV_VAR}")


def test_the_converters_two_models_give_int8_and_say_so(runtime_models, photo, tmp_path: Path,
                                                        monkeypatch) -> None:
    import logging

    shutil.copy(runtime_models.int8, tmp_path / "model_int8.tflite")
    shutil.copy(runtime_models.dense_input, tmp_path / "model_float32.tflite")  # would fail if it were used
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    reason = (f"model_int8.tflite chosen over model_float32.tflite in {tmp_path} (int8 is the one made for "
              f"devices; --model or ${MODEL_ENV_VAR} chooses another)")
    quiet = run(photo[0])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stdout.split(": ")[1].split()[0] == photo[1] and quiet.stderr == ""
    package_logger = logging.getLogger("edge_runtime")
    saved = (package_logger.level, list(package_logger.handlers))
    try:
        verbose = run("-v", photo[0])
    finally:
        package_logger.setLevel(saved[0])
        package_logger.handlers[:] = saved[1]
    assert f"edge_runtime.cli: {reason}" in verbose.stderr.splitlines()
    info = run("--info")
    assert info.exit_code == 0
    assert info.stdout.splitlines()[:2] == [f"model:        {tmp_path / 'model_int8.tflite'}",
                                            f"chosen:       {reason}"]
    assert json.loads(run("--info", "--json").stdout)["model_choice"] == reason
    shutil.copy(runtime_models.int8, tmp_path / "mine.tflite")  # not the converter's pair any more: refused
    assert run(photo[0]).exit_code == 2


# --- bad models: exit 2, one line ---------------------------------------------------------------

def bad_model(kind: str, runtime_models, folder: Path) -> tuple[Path, str]:
    """A bad model file of `kind` and the message its one error line must carry."""
    path = folder / f"{kind}.tflite"
    good = runtime_models.plain_int8.read_bytes()
    if kind == "missing":
        return path, f"{path}: model file not found"
    if kind == "empty":
        path.write_bytes(b"")
        return path, f"{path}: model file is empty (0 bytes)"
    if kind == "truncated":
        path.write_bytes(good[:len(good) // 2])
        return path, f"{path}: not a valid TFLite model (The model is not a valid Flatbuffer buffer)"
    if kind == "not_tflite":
        path.write_bytes(b"PK\x03\x04 this is a Keras zip, not a flatbuffer" * 4)
        return path, f"{path}: not a TFLite model (no 'TFL3' flatbuffer identifier)"
    if kind == "folder":
        path.mkdir()
        return path, f"{path}: is a folder, not a .tflite model file"
    if kind == "not_image":
        return runtime_models.dense_input, (f"{runtime_models.dense_input}: input tensor has shape [1, 10], "
                                            "not an image of shape [1, height, width, 3]")
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "not_tflite", "folder", "not_image"])
def test_each_bad_model_stops_with_exit_2_and_one_line(runtime_models, photo, tmp_path: Path, kind: str) -> None:
    model, message = bad_model(kind, runtime_models, tmp_path)
    result = run("--model", model, photo[0])
    assert result.exit_code == 2
    assert one_line_error(result) == f"Error: {message}"
    assert result.stdout == ""


@pytest.mark.parametrize("option", ["--info", "--benchmark"])
def test_info_and_benchmark_refuse_bad_models_the_same_way(runtime_models, tmp_path: Path, option: str) -> None:
    model, message = bad_model("truncated", runtime_models, tmp_path)
    result = run(option, model)
    assert result.exit_code == 2
    assert one_line_error(result) == f"Error: {message}"


def test_labels_file_with_the_wrong_count_is_a_model_error(runtime_models, photo, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("one\ntwo\n")
    result = run("--model", runtime_models.plain_int8, "--labels", labels, photo[0])
    assert result.exit_code == 2
    assert one_line_error(result) == f"Error: {labels}: 2 labels for a model with 4 classes"


# --- models of each type ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["float32", "int8", "uint8"])
def test_each_model_type_classifies_the_synthetic_test_set(runtime_models, split_dataset: Path, kind: str) -> None:
    result = run("--model", getattr(runtime_models, kind), "--json", "-r", split_dataset / "test")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == 80
    assert sum(Path(r["path"]).parent.name == r["label"] for r in records) >= MIN_ACCURACY * len(records)


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
@pytest.mark.parametrize("backend", ["ai_edge_litert", "tensorflow"])
def test_threads_and_backend_options_give_the_same_answer(runtime_models, photo, backend: str) -> None:
    result = run("--model", runtime_models.int8, "--threads", "2", "--backend", backend, "--json", photo[0])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    reference = json.loads(run("--model", runtime_models.int8, "--json", photo[0]).stdout)
    assert (record["label"], record["score"]) == (reference["label"], reference["score"])


# --- info, benchmark, verify --------------------------------------------------------------------

def test_info_shows_input_quantization_labels_size_sha256_and_backend(runtime_models) -> None:
    from edge_runtime.model_file.manifest import sha256_file

    result = run("--info", runtime_models.int8)
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines())
    assert lines["input"].strip() == "[1, 32, 32, 3] int8, scale 0.00392157, zero point -128"
    assert lines["output"].strip().startswith("[1, 4] int8, scale 0.00390625, zero point -128")
    assert lines["labels"].strip() == "4 (embedded): circle | cross | stripes | waves"
    assert lines["size"].strip() == f"{runtime_models.int8.stat().st_size:,} bytes"
    assert lines["sha256"].strip() == sha256_file(runtime_models.int8)
    assert lines["backend"].strip() == "ai_edge_litert, 1 thread"
    assert lines["quantized"].strip() == "yes"

    facts = json.loads(run("--info", runtime_models.float32, "--json").stdout)
    assert facts["input"] == {"shape": [1, 32, 32, 3], "dtype": "float32"}
    assert facts["quantized"] is False and facts["labels"] == list(CLASS_NAMES)


def test_bare_info_uses_the_default_model(runtime_models, tmp_path: Path, monkeypatch) -> None:
    shutil.copy(runtime_models.plain_int8, tmp_path / "only.tflite")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MODEL_ENV_VAR, raising=False)
    result = run("--info")
    assert result.exit_code == 0, result.output
    assert "labels:       none (4 classes shown as indices)" in result.stdout.splitlines()


def test_benchmark_reports_init_first_run_latency_and_throughput(runtime_models) -> None:
    result = run("--benchmark", runtime_models.int8, "--runs", "30", "--threads", "2")
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "backend:      ai_edge_litert, 2 threads" in text
    assert "over 30 runs" in text and "images/s" in text
    numbers = json.loads(run("--benchmark", runtime_models.int8, "--runs", "30", "--json").stdout)
    assert numbers["runs"] == 30 and numbers["threads"] == 1
    assert 0 < numbers["p50_ms"] <= numbers["p90_ms"]
    assert numbers["init_ms"] > 0 and numbers["first_ms"] > 0
    assert abs(numbers["images_per_second"] - 1000.0 / numbers["mean_ms"]) < 1e-6


def test_verify_checks_the_manifest(runtime_models, tmp_path: Path) -> None:
    model = tmp_path / "model_int8.tflite"
    shutil.copy(runtime_models.int8, model)
    write_manifest(tmp_path, [model.name])
    ok = run("--verify", model)
    assert ok.exit_code == 0 and ok.stdout.startswith(f"OK {model} (")
    model.write_bytes(model.read_bytes() + b"\0")
    changed = run("--verify", model)
    assert changed.exit_code == 1 and changed.stdout.startswith(f"FAILED {model}: size is ")
    elsewhere = tmp_path / "elsewhere.json"
    missing = run("--verify", model, "--manifest", elsewhere)
    assert missing.exit_code == 2
    assert one_line_error(missing) == f"Error: {elsewhere}: manifest not found"
    assert run("--verify", tmp_path / "nothing.tflite").exit_code == 2


# --- usage --------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    ([], "give an image file or folder to classify (or --camera, --info, --benchmark or --verify)"),
    (["--info", "m.tflite", "photo.jpg"], "--info and image inputs cannot be used together"),
    (["--camera", "--verify", "m.tflite"], "--verify and --camera cannot be used together"),
    (["--frames", "3", "photo.jpg"], "--frames only applies to --camera"),
    (["--runs", "3", "photo.jpg"], "--runs only applies to --benchmark"),
    (["--manifest", "m.json", "photo.jpg"], "--manifest only applies to --verify"),
])
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == f"Error: {message}"


def test_help_and_version() -> None:
    help_result = run("--help")
    assert help_result.exit_code == 0 and "--camera [SOURCE]" in help_result.stdout
    from edge_runtime import __version__

    assert run("--version").stdout.strip() == f"edge-classify, version {__version__}"


@pytest.mark.parametrize("args, message", [
    (["--output", "out.jsonl", "--info", "m.tflite"], "--output only applies to image inputs and --camera"),
    (["--recursive", "--camera"], "--recursive only applies to image inputs"),
])
def test_file_options_without_files_exit_2(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == f"Error: {message}"


def test_verbose_logs_the_model_set_up(runtime_models, photo) -> None:
    import logging

    package_logger = logging.getLogger("edge_runtime")
    saved = (package_logger.level, list(package_logger.handlers))
    try:
        result = run("-v", "--model", runtime_models.int8, photo[0])
    finally:
        package_logger.setLevel(saved[0])
        package_logger.handlers[:] = saved[1]
    assert result.exit_code == 0, result.output
    assert (f"edge_runtime.cli: model {runtime_models.int8}: backend ai_edge_litert, 1 thread(s), labels from "
            "embedded, input [1, 32, 32, 3] int8") in result.stderr
