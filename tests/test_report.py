"""edge-report's numbers and pictures without a model: metrics, thresholds, the models found, the
per-class chart, the Markdown and terminal tables, and the calibration line.

The command run end to end on the converted fixture model is tests/test_report_command.py.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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


def test_calibration_line_for_plain_min_max_and_for_unknown_files() -> None:
    from edge_runtime.info import describe_calibration

    plain = {"count": 500, "seed": 0, "split": "train", "logit_range": {"rule": "min/max of the calibration images"}}
    assert describe_calibration(plain) == "500 train images, seed 0; logits quantized over their full calibrated min/max"
    assert describe_calibration(None) is None
