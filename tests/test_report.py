"""edge-report: the numbers (pure and end to end), the files, the terminal table and the thresholds."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

pytest.register_assert_rewrite("converter_fixtures")
from converter_fixtures import SEED, Converted  # noqa: E402
from synthetic import CLASS_NAMES  # noqa: E402

pytest_plugins = ("converter_fixtures",)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FLOAT32_MAX_PROBABILITY_DIFFERENCE = 1e-4
PIXEL_SCALE = 255.0


# --- pure metrics -------------------------------------------------------------------------------------

def test_confusion_matrix_counts_true_rows_and_predicted_columns() -> None:
    from converter.report import confusion_matrix

    matrix = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]


def test_per_class_accuracy_marks_a_class_without_images() -> None:
    from converter.report import per_class_accuracy

    assert per_class_accuracy(np.array([0, 1, 0, 0]), np.array([0, 0, 0, 2]), 3) == [2 / 3, None, 0.0]


def test_compare_format_against_a_reference() -> None:
    from converter.report import compare_format

    labels = np.array([0, 1, 1, 0])
    reference = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.7, 0.3]])  # 3 of 4 correct
    other = np.array([[0.8, 0.2], [0.3, 0.7], [0.4, 0.6], [0.4, 0.6]])  # 3 of 4, differs on the last two
    result = compare_format("int8", other, labels, reference, 2, latency_ms=1.5)
    assert result.accuracy == 0.75 and result.correct == 3
    assert result.accuracy_change_pp == 0.0
    assert result.agreement == 0.5
    assert result.max_abs_prob_diff == pytest.approx(0.3)
    assert result.mean_abs_prob_diff == pytest.approx((0.1 + 0.1 + 0.2 + 0.3) * 2 / 8)
    assert result.per_class_accuracy == [0.5, 1.0]
    assert result.confusion == [[1, 1], [0, 2]]


def _report_with_int8(keras_correct: int, int8_correct: int, agreeing: int, total: int = 1000):
    from converter.report import FormatResult, Report

    def result(name: str, correct: int, agreement: int) -> FormatResult:
        return FormatResult(name=name, file=None, size_bytes=None, accuracy=correct / total, correct=correct,
                            accuracy_change_pp=(correct - keras_correct) * 100.0 / total,
                            agreement=agreement / total, mean_abs_prob_diff=0.0, max_abs_prob_diff=0.0,
                            per_class_accuracy=[], confusion=[], latency_ms=None)

    return Report(labels=[], num_images=total, data_source="", seed=0, backend=None,
                  formats=[result("keras", keras_correct, total), result("int8", int8_correct, agreeing)])


def test_max_drop_is_inclusive_and_counted_exactly() -> None:
    from converter.report import threshold_failures

    assert threshold_failures(_report_with_int8(700, 695, 990), max_drop_pp=0.5) == []
    assert threshold_failures(_report_with_int8(700, 694, 990), max_drop_pp=0.5) == [
        "int8 loses 0.60 percentage points of accuracy against Keras, more than the allowed 0.5"]


def test_min_agreement_threshold() -> None:
    from converter.report import threshold_failures

    assert threshold_failures(_report_with_int8(700, 700, 980), min_agreement_percent=98) == []
    assert threshold_failures(_report_with_int8(700, 700, 979), min_agreement_percent=98) == [
        "int8 agrees with Keras on 97.90% of test images, less than the required 98%"]


def test_thresholds_need_an_int8_model() -> None:
    from converter.report import Report, threshold_failures

    report = Report(labels=[], num_images=1, data_source="", seed=0, backend=None, formats=[])
    assert threshold_failures(report) == []
    assert threshold_failures(report, max_drop_pp=1) == [
        "no int8 model was evaluated, so its accuracy cannot be checked"]


def test_models_are_found_in_a_fixed_order(tmp_path: Path) -> None:
    from converter.report import tflite_models
    from edge_runtime.errors import ModelError

    for name in ("model_zeta.tflite", "model_int8.tflite", "model_float16.tflite", "model_float32.tflite"):
        (tmp_path / name).write_bytes(b"x")
    assert [variant for variant, _ in tflite_models(tmp_path)] == ["float32", "int8", "float16", "zeta"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelError, match=re.escape(f"{empty}: no .tflite models to evaluate; convert the model first "
                                                   f"(make convert OUT={empty}, or edge-convert --model "
                                                   f"{empty / 'model.keras'})")):
        tflite_models(empty)


def _three_class_report():
    """Keras, float32 (equal to Keras) and int8 (-10 points on "a", +5 on "b"); class "c" has no test images."""
    from converter.report import FormatResult, Report

    def result(name: str, per_class: list, confusion: list, accuracy: float, change: float) -> FormatResult:
        return FormatResult(name=name, file=None if name == "keras" else f"model_{name}.tflite", size_bytes=None,
                            accuracy=accuracy, correct=int(accuracy * 30), accuracy_change_pp=change,
                            agreement=0.9, mean_abs_prob_diff=0.01, max_abs_prob_diff=0.47,
                            per_class_accuracy=per_class, confusion=confusion, latency_ms=None)

    keras_confusion = [[9, 1, 0], [10, 10, 0], [0, 0, 0]]
    int8_confusion = [[8, 2, 0], [9, 11, 0], [0, 0, 0]]
    return Report(labels=["a", "b", "c"], num_images=30, data_source="tiny", seed=0, backend="ai_edge_litert",
                  image_path="files",
                  formats=[result("keras", [0.9, 0.5, None], keras_confusion, 19 / 30, 0.0),
                           result("float32", [0.9, 0.5, None], keras_confusion, 19 / 30, 0.0),
                           result("int8", [0.8, 0.55, None], int8_confusion, 19 / 30, 0.0)])


def test_per_class_changes_are_points_against_keras() -> None:
    from converter.report_render import per_class_changes

    changes = per_class_changes(_three_class_report())
    assert [name for name, _ in changes] == ["float32", "int8"]
    assert changes[0][1] == [0.0, 0.0, None]
    assert changes[1][1] == [pytest.approx(-10.0), pytest.approx(5.0), None]


def _bar_heights(axes, names) -> dict[str, list[float]]:
    return {name: [bar.get_height() for bar in axes.patches if bar.get_gid() == name] for name in names}


def test_per_class_chart_draws_the_accuracy_and_the_changes_around_zero(tmp_path: Path) -> None:
    from converter.report_render import (ACCURACY_PANEL, CHANGE_PANEL, per_class_accuracies, per_class_changes,
                                         plot_per_class)

    report = _three_class_report()
    path = tmp_path / "per_class_accuracy.png"
    figure = plot_per_class(per_class_accuracies(report), per_class_changes(report), ["a", "b", "c"], path,
                            "the title")
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    accuracy, change = figure.axes[ACCURACY_PANEL], figure.axes[CHANGE_PANEL]
    assert len(figure.axes) == 2

    # Top: every format's accuracy on each class, in percent, Keras first.
    heights = _bar_heights(accuracy, ("keras", "float32", "int8"))
    assert heights["keras"][:2] == [pytest.approx(90.0), pytest.approx(50.0)]
    assert heights["float32"][:2] == [pytest.approx(90.0), pytest.approx(50.0)]
    assert heights["int8"][:2] == [pytest.approx(80.0), pytest.approx(55.0)]
    assert all(np.isnan(values[2]) for values in heights.values())  # no test images of "c": no bar
    assert accuracy.get_ylim() == (0.0, 105.0)
    assert accuracy.get_ylabel() == "accuracy (%)" and accuracy.get_title() == "the title"
    assert [text.get_text() for text in accuracy.get_legend().get_texts()] == ["keras", "float32", "int8"]

    # Bottom: each format's change against Keras, in points.
    heights = _bar_heights(change, ("float32", "int8"))
    assert heights["float32"][:2] == [0.0, 0.0]
    assert heights["int8"][:2] == [pytest.approx(-10.0), pytest.approx(5.0)]
    assert np.isnan(heights["int8"][2])
    assert [tuple(line.get_ydata()) for line in change.lines] == [(0.0, 0.0)]  # the zero line
    assert change.get_ylim()[0] < -10.0 and change.get_ylim()[1] > 5.0
    assert change.get_ylabel() == "accuracy minus Keras' (percentage points)"
    assert [text.get_text() for text in change.get_legend().get_texts()] == [
        "float32 (no change on any class)", "int8"]


def test_per_class_chart_is_no_empty_frame_when_int8_changes_nothing(tmp_path: Path) -> None:
    """Where every format equals Keras the changes are all zero; the accuracy still shows, in the pixels too."""
    from matplotlib.colors import to_rgb

    from converter.report_render import (ACCURACY_PANEL, FORMAT_COLOURS, per_class_accuracies, per_class_changes,
                                         plot_per_class, write_report)

    report = _three_class_report()
    keras = report.formats[0]
    flat = dataclasses.replace(report, formats=[
        dataclasses.replace(result, per_class_accuracy=keras.per_class_accuracy, confusion=keras.confusion)
        for result in report.formats])
    figure = plot_per_class(per_class_accuracies(flat), per_class_changes(flat), flat.labels, tmp_path / "chart.png",
                            "t")
    bars = [bar for bar in figure.axes[ACCURACY_PANEL].patches if np.isfinite(bar.get_height())]
    assert sorted(bar.get_height() for bar in bars) == [pytest.approx(50.0)] * 3 + [pytest.approx(90.0)] * 3

    # In the picture the report writes, int8's red bars cover a visible share of the pixels.
    files = write_report(flat, tmp_path)
    red = np.array(to_rgb(FORMAT_COLOURS["int8"])) * 255
    with Image.open(files.per_class) as image:
        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
    assert np.mean(np.all(np.abs(pixels - red) < 8, axis=-1)) > 0.01


def test_report_markdown_speaks_in_users_words() -> None:
    from converter.report_render import PROBABILITY_DIFFERENCE_TEXT, render_markdown

    markdown = render_markdown(_three_class_report(), {"per_class": "per_class_accuracy.png"})
    for internal in ("scale_pixels", "Classifier", "model.predict", "`"):
        assert internal not in markdown
    assert ("- Keras: the trained model on the test images, preprocessed exactly as in training "
            "(pixels scaled to 0–1)") in markdown
    assert ("- TFLite: each test image file read and preprocessed by the device runtime (ai_edge_litert "
            "interpreter, 1 thread) from the model's embedded settings, as on a device") in markdown
    assert f"- {PROBABILITY_DIFFERENCE_TEXT}" in markdown
    assert PROBABILITY_DIFFERENCE_TEXT.startswith(
        "|Δp| is the absolute difference between a format's probability and Keras' probability for the same "
        "class and image. Mean |Δp| is its mean over all classes and images; Max |Δp| is the single worst one.")
    assert "| Class | Test images | keras | float32 | int8 | int8 − Keras |" in markdown
    assert "| a | 10 | 90.0% | 90.0% | 80.0% | -10.00 pp |" in markdown
    assert "| c | 0 | — | — | — | — |" in markdown
    assert "](per_class_accuracy.png)" in markdown


def test_report_links_the_trainers_accuracy_png_only_when_it_is_there(tmp_path: Path) -> None:
    from converter.report_render import TRAINING_PLOT, write_report
    from trainer.outputs import PLOT_FILE

    assert TRAINING_PLOT == PLOT_FILE
    report = _three_class_report()
    files = write_report(report, tmp_path)
    markdown = files.markdown.read_text(encoding="utf-8")
    assert "## Training" not in markdown and "accuracy.png)" not in markdown.replace("per_class_accuracy.png)", "")
    assert json.loads(files.json.read_text(encoding="utf-8"))["pictures"] == {
        "per_class": "per_class_accuracy.png", "confusion": "confusion_int8.png", "training": None}
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "confusion_int8.png", "per_class_accuracy.png", "report.json", "report.md"]

    trainer_picture = PNG_SIGNATURE + b"the trainer's own picture"
    (tmp_path / "accuracy.png").write_bytes(trainer_picture)
    files = write_report(report, tmp_path)
    markdown = files.markdown.read_text(encoding="utf-8")
    assert "## Training\n\n![Accuracy and loss per epoch, from edge-train](accuracy.png)\n" in markdown
    assert (tmp_path / "accuracy.png").read_bytes() == trainer_picture  # linked, never redrawn
    assert json.loads(files.json.read_text(encoding="utf-8"))["pictures"]["training"] == "accuracy.png"
    assert not (tmp_path / "training_curves.png").exists()


def test_a_format_that_answers_one_class_is_named_in_the_report_and_the_terminal(tmp_path: Path) -> None:
    from converter.report import Report, compare_format
    from converter.report_render import terminal_summary, write_report

    labels = np.array([0, 1, 2, 1])
    keras = np.array([[0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.3, 0.6], [0.3, 0.6, 0.1]])  # all correct
    stuck = np.array([[0.4, 0.3, 0.3], [0.5, 0.3, 0.2], [0.4, 0.2, 0.4], [0.6, 0.3, 0.1]])  # "a" every time
    formats = [compare_format("keras", keras, labels, keras, 3),
               compare_format("float32", keras, labels, keras, 3, file="model_float32.tflite"),
               compare_format("int8", stuck, labels, keras, 3, file="model_int8.tflite")]
    assert [result.one_class_answer for result in formats] == [None, None, 0]
    report = Report(labels=["a", "b", "c"], num_images=4, data_source="tiny", seed=0, backend="ai_edge_litert",
                    formats=formats)
    sentence = ('int8 answers "a" for every one of the 4 test images: it has not learned to tell the classes '
                "apart, and its accuracy is that class's share of the test set")
    files = write_report(report, tmp_path)
    markdown = files.markdown.read_text(encoding="utf-8")
    assert f"**Warning: {sentence}.**" in markdown
    assert markdown.index("**Warning:") < markdown.index("## Per-class accuracy")  # under the main table
    assert markdown.count("**Warning:") == 1  # Keras and float32 learned
    assert terminal_summary(report).endswith(f"warning: {sentence}\n")
    data = json.loads(files.json.read_text(encoding="utf-8"))
    assert [entry["one_class_answer"] for entry in data["formats"]] == [None, None, 0]


def test_text_tables_align_and_escape() -> None:
    from converter.report_render import format_points, markdown_table, text_table

    assert markdown_table(["a", "b"], [["x|y", "1"]]) == "| a | b |\n|:---|---:|\n| x\\|y | 1 |\n"
    assert text_table(["name", "n"], [["int8", "10"]]) == "name   n\n----  --\nint8  10\n"
    assert format_points(-0.001) == "+0.00 pp"
    assert format_points(-0.17) == "-0.17 pp"


# --- end to end ---------------------------------------------------------------------------------------

def _report(args: list[str]):
    from converter.cli import report_main

    return CliRunner().invoke(report_main, args)


@pytest.fixture(scope="module")
def report_run(converted: Converted):
    """`edge-report` on the fixture's float32 and int8 files, with CI-like thresholds that pass."""
    result = _report(["--model", str(converted.trained.model_path), "--max-drop", "2", "--min-agreement", "95"])
    return converted, result


def _independent_accuracies(converted: Converted) -> tuple[float, float, float]:
    """Keras, int8 accuracy and int8/Keras agreement computed without the converter or the runtime."""
    import keras
    from ai_edge_litert.interpreter import Interpreter

    dataset = converted.trained.dataset
    pixels = np.stack([np.asarray(Image.open(path).convert("RGB")) for path in dataset.test_paths])
    model = keras.models.load_model(converted.trained.model_path)
    keras_top1 = model.predict(pixels.astype(np.float32) / PIXEL_SCALE, verbose=0).argmax(axis=1)
    interpreter = Interpreter(model_path=str(converted.int8))
    interpreter.allocate_tensors()
    tensor_in, tensor_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    scale, zero_point = tensor_in["quantization"]
    int8_top1 = []
    for image in pixels:
        quantized = np.clip(np.round(image / PIXEL_SCALE / scale + zero_point), -128, 127).astype(np.int8)
        interpreter.set_tensor(tensor_in["index"], quantized[None])
        interpreter.invoke()
        int8_top1.append(int(interpreter.get_tensor(tensor_out["index"])[0].argmax()))
    int8_top1 = np.array(int8_top1)
    labels = dataset.test_labels
    return (float(np.mean(keras_top1 == labels)), float(np.mean(int8_top1 == labels)),
            float(np.mean(int8_top1 == keras_top1)))


@pytest.mark.slow
def test_report_numbers_match_an_independent_computation(report_run) -> None:
    converted, result = report_run
    assert result.exit_code == 0, result.output
    data = json.loads((converted.out / "report.json").read_text(encoding="utf-8"))
    formats = {entry["name"]: entry for entry in data["formats"]}
    assert [entry["name"] for entry in data["formats"]] == ["keras", "float32", "int8"]
    keras_accuracy, int8_accuracy, int8_agreement = _independent_accuracies(converted)
    assert formats["keras"]["accuracy"] == keras_accuracy
    assert formats["int8"]["accuracy"] == int8_accuracy
    assert formats["int8"]["agreement"] == int8_agreement
    assert formats["int8"]["accuracy_change_pp"] == pytest.approx(100 * (int8_accuracy - keras_accuracy))
    assert formats["float32"]["agreement"] == 1.0
    assert formats["float32"]["max_abs_prob_diff"] < FLOAT32_MAX_PROBABILITY_DIFFERENCE
    assert data["data"]["images"] == converted.trained.dataset.test_count
    assert data["data"]["tflite_input"] == "files"
    assert data["data"]["pixel_mismatches"] == 0
    assert data["labels"] == list(CLASS_NAMES)
    assert data["runtime"] == {"backend": "ai_edge_litert", "threads": 1}
    for name in ("float32", "int8"):
        entry = formats[name]
        assert entry["size_bytes"] == (converted.out / entry["file"]).stat().st_size
        assert entry["latency_ms"] > 0
        assert len(entry["per_class_accuracy"]) == len(CLASS_NAMES)
        assert sum(map(sum, entry["confusion"])) == converted.trained.dataset.test_count
    assert formats["int8"]["size_vs_float32"] == formats["int8"]["size_bytes"] / formats["float32"]["size_bytes"]
    assert formats["keras"]["latency_ms"] is None
    assert data["threshold_failures"] == []
    assert data["notes"] == []


@pytest.mark.slow
def test_report_files_and_pictures(report_run) -> None:
    converted, result = report_run
    markdown = (converted.out / "report.md").read_text(encoding="utf-8")
    for picture in ("confusion_int8.png", "per_class_accuracy.png"):
        path = converted.out / picture
        assert path.read_bytes()[:8] == PNG_SIGNATURE
        with Image.open(path) as image:
            assert min(image.size) >= 300
        assert f"]({picture})" in markdown
    data = json.loads((converted.out / "report.json").read_text(encoding="utf-8"))
    int8 = next(entry for entry in data["formats"] if entry["name"] == "int8")
    row = next(line for line in markdown.splitlines() if line.startswith("| int8 |"))
    assert f"{int8['accuracy'] * 100:.2f}%" in row
    assert f"{int8['agreement'] * 100:.2f}%" in row
    assert "| circle |" in markdown  # per-class table and confusion rows name the classes
    assert not list(converted.out.glob(".*.tmp*")), "a temporary file was left behind"
    assert not (converted.out / "training_curves.png").exists()  # the trainer's accuracy.png is the one picture


@pytest.mark.slow
def test_report_says_how_int8_was_calibrated(report_run) -> None:
    """The int8 calibration (count, seed, logit range) comes from the int8 file itself, as convert wrote it."""
    from edge_runtime.manifest import read_manifest

    converted, _ = report_run
    manifest = read_manifest(converted.out / "manifest.json")["calibration"]
    data = json.loads((converted.out / "report.json").read_text(encoding="utf-8"))
    assert data["int8_calibration"]["logit_range"] == manifest["logit_range"]
    assert (data["int8_calibration"]["count"], data["int8_calibration"]["seed"]) == (manifest["count"], manifest["seed"])
    markdown = (converted.out / "report.md").read_text(encoding="utf-8")
    line = next(line for line in markdown.splitlines() if line.startswith("- int8 calibration:"))
    assert f"{manifest['count']} train images, seed {manifest['seed']}" in line
    assert f"from {manifest['logit_range']['low']:g} up to at most {manifest['logit_range']['high']:g}" in line


@pytest.mark.slow
def test_report_decodes_only_the_test_images(report_run) -> None:
    converted, result = report_run
    dataset = converted.trained.dataset
    loading = [line for line in result.stderr.splitlines() if line.startswith("loading ")]
    assert loading == [f"loading {dataset.test_count:,} images from {converted.trained.data_root} (test/)"]


def test_calibration_line_for_plain_min_max_and_for_unknown_files() -> None:
    from edge_runtime.info import describe_calibration

    plain = {"count": 500, "seed": 0, "split": "train", "logit_range": {"rule": "min/max of the calibration images"}}
    assert describe_calibration(plain) == "500 train images, seed 0; logits quantized over their full calibrated min/max"
    assert describe_calibration(None) is None


@pytest.mark.slow
def test_report_prints_the_main_table(report_run) -> None:
    converted, result = report_run
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["Format", "Size", "Accuracy"]
    assert [line.split()[0] for line in lines[2:5]] == ["keras", "float32", "int8"]
    assert re.search(r"int8 file is \d+\.\d% of the float32 file's size", result.stdout)


@pytest.fixture(scope="module")
def bad_int8_folder(converted: Converted, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained model beside an int8 file converted from an untrained copy (chance-level accuracy)."""
    import keras

    from converter.convert import convert_model
    from trainer.model import build_model

    dataset = converted.trained.dataset
    folder = tmp_path_factory.mktemp("bad_int8")
    keras.utils.set_random_seed(SEED)
    untrained = build_model(num_classes=len(CLASS_NAMES))
    untrained.save(folder / "untrained.keras")
    shutil.copy(converted.trained.labels_path, folder / "labels.txt")
    convert_model(folder / "untrained.keras", folder, variants=["int8"], train_images=dataset.train_images,
                  calibration_size=50, seed=SEED)
    shutil.copy(converted.trained.model_path, folder / "model.keras")  # no training.json: no history
    return folder


@pytest.mark.slow
def test_max_drop_fails_the_report_with_one_line(bad_int8_folder: Path, converted: Converted) -> None:
    result = _report(["--model", str(bad_int8_folder / "model.keras"), "--data", str(converted.trained.data_root),
                      "--seed", str(SEED), "--max-drop", "2", "--max-images", "40", "--quiet"])
    assert result.exit_code == 1
    last = result.output.strip().splitlines()[-1]
    match = re.fullmatch(r"Error: int8 loses (\d+\.\d\d) percentage points of accuracy against Keras, "
                         r"more than the allowed 2", last)
    assert match, last
    data = json.loads((bad_int8_folder / "report.json").read_text(encoding="utf-8"))
    int8 = next(entry for entry in data["formats"] if entry["name"] == "int8")
    assert float(match.group(1)) == pytest.approx(-int8["accuracy_change_pp"], abs=0.005)
    assert data["threshold_failures"] == [last.removeprefix("Error: ")]
    assert data["data"]["images"] == 40
    # The int8 file came from another model.keras: the report says so rather than compare silently.
    stale = ("model_int8.tflite was converted from a different Keras model than the one evaluated "
             "(run edge-convert again)")
    assert data["notes"] == [stale]
    assert f"note: {stale}" in result.output
    # No accuracy.png from the trainer in this folder: the report has no training section, and draws none.
    assert not (bad_int8_folder / "training_curves.png").exists()
    assert "## Training" not in (bad_int8_folder / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_min_agreement_fails_the_report(bad_int8_folder: Path, converted: Converted) -> None:
    result = _report(["--model", str(bad_int8_folder / "model.keras"), "--data", str(converted.trained.data_root),
                      "--seed", str(SEED), "--min-agreement", "95", "--max-images", "40", "--quiet"])
    assert result.exit_code == 1
    assert re.fullmatch(r"Error: int8 agrees with Keras on \d+\.\d\d% of test images, less than the required 95%",
                        result.output.strip().splitlines()[-1])


def _fake_keras_file(path: Path) -> Path:
    """A file that passes the checks made before TensorFlow is imported (a non-empty .keras zip)."""
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("config.json", "{}")
    return path


def test_report_without_a_keras_model_says_to_train_first(tmp_path: Path) -> None:
    result = _report(["--model", str(tmp_path / "model.keras")])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {tmp_path / 'model.keras'}: no such file; train a model first "
                                     f"(make train OUT={tmp_path}, or edge-train --out {tmp_path})")


def test_report_without_tflite_models_says_to_convert_first(tmp_path: Path) -> None:
    runner = CliRunner()
    with runner.isolated_filesystem(temp_dir=tmp_path):
        from converter.cli import report_main

        _fake_keras_file(Path("artifacts/model.keras"))
        result = runner.invoke(report_main, [])
        assert result.exit_code == 1
        assert result.output == ("Error: artifacts: no .tflite models to evaluate; convert the model first "
                                 "(make convert, or edge-convert --model artifacts/model.keras)\n")
        # A model outside the report's folder: only edge-convert can write there, with both paths.
        _fake_keras_file(Path("elsewhere/model.keras"))
        result = runner.invoke(report_main, ["--model", "elsewhere/model.keras", "--out", "artifacts"])
        assert result.exit_code == 1
        assert result.output == ("Error: artifacts: no .tflite models to evaluate; convert the model first "
                                 "(edge-convert --model elsewhere/model.keras --out artifacts)\n")


def test_module_entry_runs_the_report_subcommand(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """`python -m converter.cli report --out DIR` (what `make report` runs) reaches edge-report."""
    from converter.cli import module_main

    _fake_keras_file(tmp_path / "model.keras")
    with pytest.raises(SystemExit) as exited:
        module_main(["report", "--out", str(tmp_path)])
    assert exited.value.code == 1
    assert capsys.readouterr().err.strip() == (f"Error: {tmp_path}: no .tflite models to evaluate; convert the "
                                               f"model first (make convert OUT={tmp_path}, or edge-convert "
                                               f"--model {tmp_path / 'model.keras'})")


@pytest.mark.slow
def test_benchmark_script_checks_the_targets(converted: Converted, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/bench_convert.py (what `make bench` runs) on the fixture model: two conversions, one report."""
    import importlib.util

    folder = tmp_path / "bench"
    folder.mkdir()
    for name in ("model.keras", "labels.txt", "training.json"):
        shutil.copy(converted.out / name, folder / name)
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_convert.py"
    spec = importlib.util.spec_from_file_location("bench_convert", script)
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # dataclasses look their module up there
    spec.loader.exec_module(bench)
    summary = bench.run_benchmark(folder, calibration_size=50, quiet=True, compare_seeds=1)
    assert summary["int8_same_sha256"] is True
    assert summary["int8_sha256"] == summary["int8_sha256_second_run"]
    assert summary["calibration_images"] == 50
    assert summary["float32_agreement_percent"] == 100.0
    report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    int8 = next(entry for entry in report["formats"] if entry["name"] == "int8")
    assert summary["int8_accuracy_change_pp"] == int8["accuracy_change_pp"]
    assert summary["int8_size_ratio"] == int8["size_vs_float32"]
    assert [check["passed"] for check in summary["checks"]] == [True] * 5
    assert summary["passed"] is True
    # The side-by-side logit-range comparison: one calibration draw, both ways, through the runtime.
    (row,) = summary["logit_range_comparison"]
    assert row["seed"] == json.loads((folder / "training.json").read_text(encoding="utf-8"))["seed"]
    for name in ("clipped", "minmax"):
        assert 95.0 <= row[f"{name}_agreement_percent"] <= 100.0
    assert row["disagreement_ratio"] == pytest.approx(
        (100.0 - row["clipped_agreement_percent"]) / max(100.0 - row["minmax_agreement_percent"], 1e-9))
    table = bench.format_comparison(summary["logit_range_comparison"])
    assert table.splitlines()[-1].split()[0] == "mean"


@pytest.mark.slow
def test_max_images_decodes_only_the_sampled_test_files(bad_int8_folder: Path, converted: Converted) -> None:
    from converter.report import sample_indices

    result = _report(["--model", str(bad_int8_folder / "model.keras"), "--data", str(converted.trained.data_root),
                      "--seed", str(SEED), "--max-images", "40"])
    assert result.exit_code == 0, result.output
    test_count = converted.trained.dataset.test_count
    assert (f"loading 40 images from {converted.trained.data_root} (test/) (picked from {test_count:,} in test/)"
            in result.output.splitlines())
    data = json.loads((bad_int8_folder / "report.json").read_text(encoding="utf-8"))
    assert data["data"]["images"] == 40
    # The same 40 images as the draw over the whole decoded split would have evaluated.
    expected = np.bincount(converted.trained.dataset.test_labels[sample_indices(test_count, 40, SEED)],
                           minlength=converted.trained.dataset.num_classes)
    per_class = [sum(row) for row in data["formats"][0]["confusion"]]
    assert per_class == expected.tolist()
