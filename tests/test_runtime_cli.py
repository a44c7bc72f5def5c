"""`edge-classify` on files and folders: every option, output formats, exit codes and messages."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result

from edge_runtime.classify import Classifier
from edge_runtime.cli import main
from edge_runtime.model_file.choose import MODEL_ENV_VAR
from edge_runtime.model_file.manifest import write_manifest
from runtime_fixtures import BOMB_SIDE, bad_files, png_declaring
from synthetic import CLASS_NAMES

pytest_plugins = ("runtime_fixtures",)

MIN_ACCURACY = 0.9
MIN_TOP_SCORE = 0.5
JSON_KEYS = {"path", "label", "score", "top_k", "latency_ms"}


def run(*args: str | os.PathLike, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, [str(arg) for arg in args], env=env)


def one_line_error(result: Result) -> str:
    """The single stderr line of a fatal error (asserting there is exactly one, and no traceback)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    return lines[0]


@pytest.fixture
def photo(split_dataset: Path) -> tuple[Path, str]:
    """One test image and its class name."""
    return split_dataset / "test" / "cross" / "0003.png", "cross"


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


# --- output -------------------------------------------------------------------------------------

def test_json_lines_carry_path_label_score_top_k_and_latency(runtime_models, split_dataset: Path) -> None:
    folder = split_dataset / "test" / "waves"
    result = run("--model", runtime_models.int8, "--json", "--top-k", "3", folder)
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == sorted(str(p) for p in folder.iterdir())
    for record in records:
        assert set(record) == JSON_KEYS
        assert record["label"] == record["top_k"][0]["label"]
        assert record["score"] == record["top_k"][0]["score"]
        assert len(record["top_k"]) == 3
        assert set(record["top_k"][0]) == {"label", "score"}
        scores = [entry["score"] for entry in record["top_k"]]
        assert scores == sorted(scores, reverse=True)
        assert record["latency_ms"] > 0.0
    assert sum(r["label"] == "waves" for r in records) >= MIN_ACCURACY * len(records)
    assert result.stderr.startswith(f"classified {len(records)} of {len(records)} inputs in ")


def test_human_lines_show_top_k_classes_best_first(runtime_models, photo) -> None:
    result = run("--model", runtime_models.int8, "-k", "4", photo[0])
    assert result.exit_code == 0, result.output
    path, classes = result.stdout.strip().split(": ")
    shown = [item.rsplit(" ", 1) for item in classes.split(" | ")]
    assert sorted(name for name, _ in shown) == sorted(CLASS_NAMES)
    scores = [float(score) for _, score in shown]
    assert scores == sorted(scores, reverse=True) and abs(sum(scores) - 1.0) < 0.02
    assert shown[0][0] == photo[1]


def test_labels_with_commas_stay_apart_in_lines_and_info(runtime_models, photo, tmp_path: Path) -> None:
    names = ["circle, round thing", "cross", "stripes, lines", "waves"]  # CLASS_NAMES with commas added
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(names) + "\n")
    result = run("--model", runtime_models.plain_int8, "--labels", labels, "-k", "4", photo[0])
    assert result.exit_code == 0, result.output
    classes = result.stdout.strip().split(": ", 1)[1].split(" | ")
    assert sorted(item.rsplit(" ", 1)[0] for item in classes) == sorted(names)
    info = run("--info", runtime_models.plain_int8, "--labels", labels)
    assert info.exit_code == 0, info.output
    shown = f"labels:       4 ({labels}): circle, round thing | cross | stripes, lines | waves"
    assert shown in info.stdout.splitlines()


def test_threshold_says_uncertain_below_it(runtime_models, photo) -> None:
    confident = run("--model", runtime_models.int8, "--threshold", "0.5", photo[0])
    assert confident.stdout.strip().split(": ")[1].split()[0] == photo[1]
    doubtful = run("--model", runtime_models.int8, "--threshold", "1.0", photo[0])
    assert doubtful.exit_code == 0
    assert doubtful.stdout.strip().split(": ")[1].startswith(f"uncertain ({photo[1]} ")
    record = json.loads(run("--model", runtime_models.int8, "--threshold", "1.0", "--json", photo[0]).stdout)
    assert record["label"] == "uncertain" and record["uncertain"] is True
    assert record["top_k"][0]["label"] == photo[1] and record["score"] < 1.0


def test_threshold_and_top_k_ranges_are_checked(photo) -> None:
    assert run("--threshold", "1.5", photo[0]).exit_code == 2
    assert run("--top-k", "0", photo[0]).exit_code == 2


def test_output_file_is_written_and_stdout_stays_empty(runtime_models, split_dataset: Path, tmp_path: Path) -> None:
    target = tmp_path / "out" / "results.jsonl"
    target.parent.mkdir()
    result = run("--model", runtime_models.int8, "--json", "-o", target, split_dataset / "test" / "circle")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    lines = target.read_text().splitlines()
    assert len(lines) == 20 and all(json.loads(line)["path"].endswith(".png") for line in lines)
    assert [p.name for p in target.parent.iterdir()] == ["results.jsonl"]  # no temporary left behind


def test_output_into_a_missing_folder_says_so_and_creates_nothing(runtime_models, photo, tmp_path: Path) -> None:
    target = tmp_path / "not_yet" / "results.jsonl"
    result = run("--model", runtime_models.int8, "--json", "-o", target, photo[0])
    assert result.exit_code == 2
    assert one_line_error(result) == (f"Error: {target}: cannot write results "
                                      f"(folder {tmp_path / 'not_yet'} does not exist)")
    assert not (tmp_path / "not_yet").exists()


def test_odd_file_names_still_give_valid_json(runtime_models, photo, tmp_path: Path) -> None:
    odd = tmp_path / 'caf\u00e9 "quoted" \\ name.png'
    shutil.copy(photo[0], odd)
    record = json.loads(run("--model", runtime_models.int8, "--json", odd).stdout)
    assert record["path"] == str(odd) and record["label"] == photo[1]


# --- labels -------------------------------------------------------------------------------------

def test_model_without_labels_shows_indices_or_the_labels_file(runtime_models, photo) -> None:
    index = CLASS_NAMES.index(photo[1])
    plain = run("--model", runtime_models.plain_int8, photo[0])
    assert plain.stdout.split(": ")[1].split()[0] == str(index)
    named = run("--model", runtime_models.plain_int8, "--labels", runtime_models.labels_file, photo[0])
    assert named.stdout.split(": ")[1].split()[0] == photo[1]


def test_embedded_labels_win_over_a_labels_file_with_a_note(runtime_models, photo, tmp_path: Path) -> None:
    labels = tmp_path / "labels.txt"
    labels.write_text("a\nb\nc\nd\n")
    result = run("--model", runtime_models.int8, "--labels", labels, photo[0])
    assert result.exit_code == 0
    assert result.stdout.split(": ")[1].split()[0] == photo[1]
    assert result.stderr.strip() == (f"note: {runtime_models.int8} carries its own labels; "
                                     f"--labels {labels} is not used")


# --- folders and bad inputs ---------------------------------------------------------------------

def test_recursive_descends_and_plain_folder_asks_for_it(runtime_models, split_dataset: Path) -> None:
    test_root = split_dataset / "test"
    flat = run("--model", runtime_models.int8, test_root)
    assert flat.exit_code == 1
    assert flat.stderr.strip().splitlines()[0] == (f"{test_root}: error: folder has no image files, only "
                                                    "sub-folders: use -r (--recursive) to classify the images in them")
    deep = run("--model", runtime_models.int8, "--json", "-r", test_root)
    assert deep.exit_code == 0, deep.output
    records = [json.loads(line) for line in deep.stdout.splitlines()]
    expected = sorted(str(p) for p in test_root.rglob("*.png"))
    assert [r["path"] for r in records] == expected
    correct = sum(Path(r["path"]).parent.name == r["label"] for r in records)
    assert correct >= MIN_ACCURACY * len(records)


def images_at_the_top_and_below(photo: Path, folder: Path) -> Path:
    """`folder` with one image at its top, two in sub-folders and an empty sub-folder."""
    for name in ["top.png", "more/one.png", "more/deeper/two.png"]:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(photo, folder / name)
    (folder / "also").mkdir()
    return folder


def test_a_folder_without_r_says_which_sub_folders_it_did_not_search(runtime_models, photo, tmp_path: Path) -> None:
    folder = images_at_the_top_and_below(photo[0], tmp_path / "photos")
    note = f"note: {folder}: 2 sub-folders not searched (also, more): use -r (--recursive) to search sub-folders too"
    text = run("--model", runtime_models.int8, folder)
    assert text.exit_code == 0, text.output
    assert [line.split(": ")[0] for line in text.stdout.splitlines()] == [str(folder / "top.png")]
    assert text.stderr.splitlines() == [note]
    as_json = run("--model", runtime_models.int8, "--json", folder)
    assert as_json.exit_code == 0, as_json.output
    assert [json.loads(line)["path"] for line in as_json.stdout.splitlines()] == [str(folder / "top.png")]
    assert as_json.stderr.splitlines() == [note]
    deep = run("--model", runtime_models.int8, "-r", folder)
    assert deep.exit_code == 0 and len(deep.stdout.splitlines()) == 3 and "note:" not in deep.stderr


def test_a_folder_with_only_sub_folders_is_one_error_and_said_on_stderr_with_json(runtime_models, photo,
                                                                                  tmp_path: Path) -> None:
    folder = images_at_the_top_and_below(photo[0], tmp_path / "photos")
    (folder / "top.png").unlink()
    text = run("--model", runtime_models.int8, folder)
    assert text.exit_code == 1
    assert text.stderr.splitlines() == [f"{folder}: error: folder has no image files, only sub-folders: use -r "
                                        "(--recursive) to classify the images in them"]  # said once, not twice
    as_json = run("--model", runtime_models.int8, "--json", folder)
    assert as_json.exit_code == 1
    assert json.loads(as_json.stdout)["error"].startswith("folder has no image files, only sub-folders")
    assert as_json.stderr.splitlines() == [f"note: {folder}: 2 sub-folders not searched (also, more): use -r "
                                           "(--recursive) to search sub-folders too"]


def test_folder_answers_are_the_classifiers_answers(runtime_models, split_dataset: Path) -> None:
    folder = split_dataset / "test" / "stripes"
    records = [json.loads(line) for line in run("--model", runtime_models.float32, "--json", folder).stdout.splitlines()]
    classifier = Classifier(runtime_models.float32)
    for record in records:
        scores = classifier.scores(classifier.load(record["path"]))
        assert record["label"] == CLASS_NAMES[int(np.argmax(scores))]
        assert abs(record["score"] - float(scores.max())) < 1e-6


def test_bad_inputs_get_one_line_each_and_the_rest_is_classified(runtime_models, photo, tmp_path: Path) -> None:
    bad = bad_files(tmp_path / "bad")
    hidden = tmp_path / "bad" / ".thumbnail.jpg"
    hidden.write_bytes(b"junk")  # hidden files in folders are skipped, not reported
    (tmp_path / "bad" / "readme.txt").write_text("not an image extension: skipped")
    missing = tmp_path / "missing.jpg"
    result = run("--model", runtime_models.int8, photo[0], tmp_path / "bad", missing)
    assert result.exit_code == 1
    assert result.stdout.strip().split(": ")[0] == str(photo[0])
    errors = [line for line in result.stderr.strip().splitlines() if ": error: " in line]
    expected = {str(path): reason for path, reason in bad.values()}
    expected[str(missing)] = "no such file or folder"
    assert len(errors) == len(expected)
    for line in errors:
        path, reason = line.split(": error: ")
        assert reason.startswith(expected[path]), line
    assert "Traceback" not in result.output
    assert result.stderr.strip().splitlines()[-1].startswith(f"classified 1 of {len(expected) + 1} inputs in ")
    assert result.stderr.strip().endswith(f"; {len(expected)} failed")


def test_bad_inputs_in_json_are_path_and_error_records(runtime_models, tmp_path: Path) -> None:
    bad = bad_files(tmp_path / "bad")
    result = run("--model", runtime_models.int8, "--json", *[path for path, _ in bad.values()])
    assert result.exit_code == 1
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in records] == [str(path) for path, _ in bad.values()]
    for record, (_, reason) in zip(records, bad.values()):
        assert set(record) == {"path", "error"} and record["error"].startswith(reason)


def test_a_declared_bomb_is_refused_in_well_under_a_second(runtime_models, tmp_path: Path) -> None:
    import time

    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_declaring(BOMB_SIDE, BOMB_SIDE))
    large = tmp_path / "large.png"
    large.write_bytes(png_declaring(12_000, 10_000))
    started = time.perf_counter()
    result = run("--model", runtime_models.int8, bomb, large)
    assert time.perf_counter() - started < 1.0
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[:2] == [
        f"{bomb}: error: declares too many pixels to decode safely (possible decompression bomb)",
        f"{large}: error: declares 12000x10000 pixels, more than the limit of 100,000,000 "
        "(possible decompression bomb)",
    ]


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
    (["--output", "out.jsonl", "--info", "m.tflite"], "--output only applies to image inputs"),
    (["--recursive", "--camera"], "--recursive only applies to image inputs"),
])
def test_file_options_without_files_exit_2(args: list[str], message: str) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == f"Error: {message}"


def test_unwritable_output_is_exit_2_one_line(runtime_models, photo, tmp_path: Path) -> None:
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file where a folder would have to be")
    result = run("--model", runtime_models.int8, "-o", blocker / "out.jsonl", photo[0])
    assert result.exit_code == 2
    assert one_line_error(result).startswith(f"Error: {blocker / 'out.jsonl'}: cannot write results (")


def test_ctrl_c_during_a_folder_stops_with_exit_130_and_a_summary(runtime_models, split_dataset: Path,
                                                                  monkeypatch) -> None:
    original = Classifier.load
    calls = []

    def load(classifier: Classifier, path):
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(classifier, path)

    monkeypatch.setattr(Classifier, "load", load)
    result = run("--model", runtime_models.int8, split_dataset / "test" / "circle")
    assert result.exit_code == 130
    assert len(result.stdout.splitlines()) == 2
    assert result.stderr.strip().startswith("interrupted after 2 inputs: 2 classified in ")


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


def test_a_reader_that_goes_away_ends_the_run_quietly(runtime_models, split_dataset: Path) -> None:
    import subprocess
    import sys

    code = "import sys; from edge_runtime.cli import main; sys.exit(main())"
    train = str(split_dataset / "train")  # 240 images; four times, with 4 classes each: far more than a pipe holds
    process = subprocess.Popen([sys.executable, "-c", code, "--model", str(runtime_models.int8), "--json", "-r",
                                "--top-k", "4", train, train, train, train], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, cwd=Path(__file__).resolve().parent.parent)
    first = process.stdout.readline()
    process.stdout.close()  # like `| head -1`
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=60) == 141
    assert json.loads(first)["path"].endswith(".png")
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_nan_scores_are_a_per_image_error_not_a_crash(runtime_models, photo, monkeypatch) -> None:
    monkeypatch.setattr(Classifier, "scores", lambda self, pixels: np.full(4, np.nan, dtype=np.float32))
    result = run("--model", runtime_models.float32, "--json", photo[0])
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {"path": str(photo[0]), "error": "the model returned no usable scores (NaN)"}


def test_one_interpreter_serves_a_whole_folder(runtime_models, split_dataset: Path, monkeypatch) -> None:
    import edge_runtime.classify as classify_module

    built = []
    original = classify_module.make_interpreter

    def counting(*args, **kwargs):
        built.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(classify_module, "make_interpreter", counting)
    result = run("--model", runtime_models.int8, "--json", "-r", split_dataset / "test")
    assert result.exit_code == 0
    assert len(result.stdout.splitlines()) == 80 and len(built) == 1
