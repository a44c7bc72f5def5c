"""The report for people: markdown and terminal tables, and the pictures.

Text rendering is pure (a Report in, a string out). Pictures use matplotlib's object API
(`matplotlib.figure.Figure`, rendered by Agg) so no pyplot state or GUI backend is involved;
matplotlib is imported only when a picture is drawn.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edge_runtime.atomic import atomic_path, write_text
from edge_runtime.info import describe_calibration
from trainer.tensorflow_env import MATPLOTLIB, missing_package_error

from .variants import FLOAT32, INT8
from .report import KERAS, PERCENT, FormatResult, Report, is_finite_number, per_class_change_pp

logger = logging.getLogger(__name__)

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
CONFUSION_PNG = "confusion_int8.png"
PER_CLASS_PNG = "per_class_accuracy.png"
TRAINING_PLOT = "accuracy.png"  # edge-train's own picture (trainer.outputs.PLOT_FILE), linked when beside the report
DASH = "—"
FIGURE_DPI = 120
KIB = 1024
MIB = 1024 * 1024
# Confusion-matrix cells darker than this share of the largest count get white text.
DARK_CELL_FRACTION = 0.5
BAR_GROUP_WIDTH = 0.8
# The per-class change chart's y axis spans at least this many points either side of zero, so that a
# format equal to Keras shows as a flat line, not as noise blown up to fill the axes.
MIN_CHANGE_AXIS_PP = 1.0
CHANGE_AXIS_MARGIN = 1.2  # room above and below the longest bar for its value
ACCURACY_AXIS_TOP = 105.0  # percent: room above a bar at 100%
FORMAT_COLOURS = {KERAS: "tab:gray", INT8: "tab:red", FLOAT32: "tab:blue"}
ACCURACY_PANEL, CHANGE_PANEL = 0, 1  # the per-class chart's panels, top to bottom


@dataclasses.dataclass(frozen=True)
class ReportFiles:
    """The files a report run wrote (None for a picture that was skipped)."""

    markdown: Path
    json: Path
    confusion: Path | None
    per_class: Path | None


# --- numbers to text ------------------------------------------------------------------------------

def format_size(size: int | None) -> str:
    """Bytes as KiB or MiB for people."""
    if size is None:
        return DASH
    if size >= MIB:
        return f"{size / MIB:.2f} MiB"
    return f"{size / KIB:.1f} KiB"


def format_percent(fraction: float | None, digits: int = 2) -> str:
    """0.7123 -> '71.23%'."""
    return f"{fraction * PERCENT:.{digits}f}%" if is_finite_number(fraction) else DASH


def format_points(points: float | None) -> str:
    """A signed percentage-point change: '+0.00 pp', '-0.17 pp'."""
    if not is_finite_number(points):
        return DASH
    points = 0.0 if abs(points) < 0.005 else points  # never print '-0.00'
    return f"{points:+.2f} pp"


def format_difference(value: float | None) -> str:
    """A probability difference in scientific notation (they span 1e-8 to 1e-1)."""
    return f"{value:.2e}" if is_finite_number(value) else DASH


def format_latency(milliseconds: float | None) -> str:
    return f"{milliseconds:.3f}" if is_finite_number(milliseconds) else DASH


MAIN_HEADERS = ("Format", "File", "Size", "Size vs float32", "Top-1 accuracy", "Change vs Keras",
                "Agreement with Keras", "Mean |Δp|", "Max |Δp|", "Latency (ms/image)")
TERMINAL_HEADERS = ("Format", "Size", "Accuracy", "Change", "Agreement", "Mean |Δp|", "Max |Δp|", "ms/image")


def main_rows(report: Report) -> list[list[str]]:
    """The main table's rows, one per format, Keras first."""
    rows = []
    for result in report.formats:
        ratio = report.size_ratio(result.name)
        rows.append([
            result.name,
            result.file or DASH,
            format_size(result.size_bytes),
            format_percent(ratio, 1) if ratio is not None else DASH,
            format_percent(result.accuracy),
            format_points(result.accuracy_change_pp) if result.name != KERAS else DASH,
            format_percent(result.agreement) if result.name != KERAS else DASH,
            format_difference(result.mean_abs_prob_diff) if result.name != KERAS else DASH,
            format_difference(result.max_abs_prob_diff) if result.name != KERAS else DASH,
            format_latency(result.latency_ms),
        ])
    return rows


def terminal_rows(report: Report) -> list[list[str]]:
    """The columns of the main table that fit a terminal."""
    keep = [MAIN_HEADERS.index(name) for name in
            ("Format", "Size", "Top-1 accuracy", "Change vs Keras", "Agreement with Keras",
             "Mean |Δp|", "Max |Δp|", "Latency (ms/image)")]
    return [[row[i] for i in keep] for row in main_rows(report)]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int = 1) -> str:
    """A GitHub markdown table; columns from `numeric_from` on are right-aligned."""
    def escape(cell: str) -> str:
        return str(cell).replace("|", "\\|")

    lines = ["| " + " | ".join(escape(h) for h in headers) + " |",
             "|" + "|".join(":---" if i < numeric_from else "---:" for i in range(len(headers))) + "|"]
    lines += ["| " + " | ".join(escape(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned table for the terminal: first column left, the rest right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * width for width in widths])] + [line(row) for row in rows]) + "\n"


def terminal_summary(report: Report) -> str:
    """What `edge-report` prints: the main table, one line per size ratio and per format that answers one class."""
    text = text_table(TERMINAL_HEADERS, terminal_rows(report))
    for result in report.formats:
        ratio = report.size_ratio(result.name)
        if result.name not in (KERAS, FLOAT32) and ratio is not None:
            text += f"{result.name} file is {ratio * PERCENT:.1f}% of the float32 file's size\n"
    for sentence in one_class_sentences(report):
        text += f"warning: {sentence}\n"
    return text


def one_class_sentences(report: Report) -> list[str]:
    """One sentence for each format that answers the same class for every test image."""
    return [f"{result.name} answers \"{report.labels[result.one_class_answer]}\" for every one of the "
            f"{report.num_images:,} test images: it has not learned to tell the classes apart, and its accuracy "
            f"is that class's share of the test set"
            for result in report.formats if result.one_class_answer is not None]


def per_class_accuracies(report: Report) -> list[tuple[str, list[float | None]]]:
    """(format, accuracy on each class) for every format, Keras first: the top panel of the per-class chart."""
    return [(result.name, list(result.per_class_accuracy)) for result in report.formats]


def per_class_changes(report: Report) -> list[tuple[str, list[float | None]]]:
    """(format, per-class accuracy minus Keras' in percentage points) for every format but Keras.

    What the per-class chart plots: equal bars would hide what quantization cost, the differences show it.
    """
    keras = report.format(KERAS)
    if keras is None:
        return []
    return [(result.name, per_class_change_pp(result.per_class_accuracy, keras.per_class_accuracy))
            for result in report.formats if result.name != KERAS]


def per_class_headers(report: Report) -> list[str]:
    headers = ["Class", "Test images"] + [result.name for result in report.formats]
    if report.format(INT8) is not None and report.format(KERAS) is not None:
        headers.append(f"{INT8} − Keras")
    return headers


def per_class_rows(report: Report) -> list[list[str]]:
    """One row per class: its number of test images, each format's accuracy on it, then int8's change."""
    reference = report.format(KERAS) or report.formats[0]
    counts = np.sum(np.asarray(reference.confusion), axis=1)
    int8_change = dict(per_class_changes(report)).get(INT8)
    rows = []
    for index, label in enumerate(report.labels):
        row = [label, str(int(counts[index]))]
        row += [format_percent(result.per_class_accuracy[index], 1) for result in report.formats]
        if int8_change is not None:
            row.append(format_points(int8_change[index]))
        rows.append(row)
    return rows


def confusion_rows(result: FormatResult, labels: Sequence[str]) -> list[list[str]]:
    return [[label] + [str(count) for count in row] for label, row in zip(labels, result.confusion)]


PROBABILITY_DIFFERENCE_TEXT = (
    "|Δp| is the absolute difference between a format's probability and Keras' probability for the same "
    "class and image. Mean |Δp| is its mean over all classes and images; Max |Δp| is the single worst one. "
    "A large max on a few images is expected for int8 where two classes are close (a small shift moves "
    "probability from one to the other); agreement and accuracy are what matter for the answers.")


def render_markdown(report: Report, pictures: dict[str, str | None], failures: Sequence[str] = ()) -> str:
    """report.md: what was measured, the main table, per-class accuracy, the int8 confusion, training."""
    lines = ["# Quantization accuracy report", ""]
    threads = f"{report.threads} thread{'s' if report.threads != 1 else ''}"
    runtime = f"the device runtime ({report.backend or 'no'} interpreter, {threads})"
    tflite_input = (f"each test image file read and preprocessed by {runtime} from the model's embedded "
                    "settings, as on a device" if report.image_path == "files" else
                    f"the decoded test images (no image files in this data set) classified by {runtime}")
    lines += [f"- Test set: {report.data_source} — {report.num_images:,} images, {len(report.labels)} classes",
              "- Keras: the trained model on the test images, preprocessed exactly as in training "
              "(pixels scaled to 0–1)",
              f"- TFLite: {tflite_input}",
              "- Agreement: the share of test images whose top class is the same as Keras'",
              f"- {PROBABILITY_DIFFERENCE_TEXT}",
              "- Latency: mean time to classify one decoded image on the device runtime (converting the "
              "input, running the model, reading the probabilities), not counting reading the file"]
    calibration_line = describe_calibration(report.int8_calibration)
    lines += [f"- int8 calibration: {calibration_line}"] if calibration_line else []
    lines += [""]
    lines += ["## Formats", "", markdown_table(MAIN_HEADERS, main_rows(report), numeric_from=2)]
    ratio = report.size_ratio(INT8)
    int8 = report.format(INT8)
    if int8 is not None:
        summary = (f"int8 against Keras: {format_points(int8.accuracy_change_pp)} accuracy, "
                   f"{format_percent(int8.agreement)} top-1 agreement")
        if ratio is not None:
            summary += f", file {format_percent(ratio, 1)} of float32's size"
        lines += [summary + ".", ""]
    lines += [f"**Warning: {sentence}.**\n" for sentence in one_class_sentences(report)]
    if failures:
        lines += ["## Thresholds failed", ""] + [f"- {failure}" for failure in failures] + [""]

    lines += ["## Per-class accuracy", ""]
    lines += [markdown_table(per_class_headers(report), per_class_rows(report))]
    if pictures.get("per_class"):
        lines += ["The chart shows each format's accuracy on each class (top) and its change against Keras, in "
                  "percentage points (bottom; below zero: the format gets more of that class wrong than Keras).", "",
                  f"![Per-class accuracy and its change against Keras]({pictures['per_class']})", ""]

    if int8 is not None:
        lines += ["## int8 confusion matrix", "", "Rows: true class; columns: int8's prediction.", ""]
        lines += [markdown_table(["true \\ predicted"] + list(report.labels), confusion_rows(int8, report.labels))]
        if pictures.get("confusion"):
            lines += [f"![int8 confusion matrix]({pictures['confusion']})", ""]

    if pictures.get("training"):
        lines += ["## Training", "", f"![Accuracy and loss per epoch, from edge-train]({pictures['training']})", ""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in report.notes] + [""]
    return "\n".join(lines).rstrip() + "\n"


# --- pictures -------------------------------------------------------------------------------------

def _new_figure(width: float, height: float) -> Any:
    # Lazy: the report's text needs no matplotlib. Agg canvas, no pyplot: no global backend state.
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ModuleNotFoundError as error:
        if error.name != MATPLOTLIB:
            raise
        raise missing_package_error([MATPLOTLIB], "drawing the report's pictures") from error

    figure = Figure(figsize=(width, height), dpi=FIGURE_DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def plot_confusion(matrix: np.ndarray, labels: Sequence[str], path: str | os.PathLike, title: str) -> None:
    """A confusion-matrix heat map with the counts written in, saved atomically as PNG."""
    matrix = np.asarray(matrix)
    size = max(4.0, 0.6 * len(labels) + 2.0)
    figure = _new_figure(size + 1.0, size)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues", vmin=0)
    figure.colorbar(image, ax=axes, shrink=0.8, label="test images")
    ticks = np.arange(len(labels))
    axes.set_xticks(ticks, labels=list(labels), rotation=45, ha="right")
    axes.set_yticks(ticks, labels=list(labels))
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    dark = matrix.max() * DARK_CELL_FRACTION if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axes.text(column, row, str(int(count)), ha="center", va="center", fontsize=8,
                  color="white" if count > dark else "black")
    _save(figure, path)


def plot_per_class(accuracies: Sequence[tuple[str, Sequence[float | None]]],
                   changes: Sequence[tuple[str, Sequence[float | None]]], labels: Sequence[str],
                   path: str | os.PathLike, title: str) -> Any:
    """Two panels over the classes: each format's accuracy (top, Keras first) and each format's change
    against Keras in points (bottom, around a zero line), as grouped bars.

    `accuracies` is `per_class_accuracies(report)`, `changes` `per_class_changes(report)`. The top panel
    shows what the formats get right even where nothing changed; the bottom one makes small changes
    visible. int8's change bars carry their values. Saved atomically as PNG; the figure is returned so
    tests can read back what was drawn.
    """
    figure = _new_figure(max(7.5, 0.9 * len(labels) + 3.5), 7.0)
    accuracy_axes, change_axes = figure.subplots(2, 1, sharex=True)
    positions = np.arange(len(labels))
    slots = [name for name, _ in accuracies]  # a format's bars sit at the same place in both panels
    percents = [(name, [None if value is None else value * PERCENT for value in values]) for name, values in accuracies]
    _grouped_bars(accuracy_axes, positions, slots, percents)
    accuracy_axes.set_ylim(0.0, ACCURACY_AXIS_TOP)
    accuracy_axes.set_ylabel("accuracy (%)")
    accuracy_axes.set_title(title)
    accuracy_axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    accuracy_axes.grid(axis="y", alpha=0.3)

    largest = 0.0
    for name, bars, heights in _grouped_bars(change_axes, positions, slots, changes, unchanged_note=True):
        if name == INT8:
            change_axes.bar_label(bars, labels=[format_points(value).removesuffix(" pp") if np.isfinite(value) else ""
                                                for value in heights], fontsize=7, padding=2)
        if np.isfinite(heights).any():
            largest = max(largest, float(np.nanmax(np.abs(heights))))
    change_axes.axhline(0.0, color="black", linewidth=0.8)
    limit = max(MIN_CHANGE_AXIS_PP, largest * CHANGE_AXIS_MARGIN)
    change_axes.set_ylim(-limit, limit)
    change_axes.set_xticks(positions, labels=list(labels), rotation=45, ha="right")
    change_axes.set_xlabel("true class")
    change_axes.set_ylabel("accuracy minus Keras' (percentage points)")
    change_axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    change_axes.grid(axis="y", alpha=0.3)
    _save(figure, path)
    return figure


def _grouped_bars(axes: Any, positions: np.ndarray, slots: Sequence[str],
                  series: Sequence[tuple[str, Sequence[float | None]]],
                  unchanged_note: bool = False) -> list[tuple[str, Any, np.ndarray]]:
    """One bar per class for each (format, values), side by side around each class's position, each
    format at its place in `slots`; None draws no bar. With `unchanged_note`, a format whose bars are
    all 0 (invisible) says so in the legend.
    """
    width = BAR_GROUP_WIDTH / max(1, len(slots))
    drawn = []
    for name, values in series:
        offset = slots.index(name) - (len(slots) - 1) / 2
        heights = np.array([np.nan if value is None else value for value in values], dtype=np.float64)
        label = f"{name} (no change on any class)" if unchanged_note and not np.any(np.nan_to_num(heights)) else name
        bars = axes.bar(positions + offset * width, heights, width, label=label,
                        color=FORMAT_COLOURS.get(name), gid=name)
        drawn.append((name, bars, heights))
    return drawn


def _save(figure: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def write_report(report: Report, out_dir: str | os.PathLike, failures: Sequence[str] = ()) -> ReportFiles:
    """Write the pictures, report.json and report.md into `out_dir`, each atomically.

    The training curves are edge-train's own accuracy.png: linked when it is in `out_dir`, not redrawn.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_class = None
    changes = per_class_changes(report)
    if changes:
        per_class = out / PER_CLASS_PNG
        plot_per_class(per_class_accuracies(report), changes, report.labels, per_class,
                       f"Per-class accuracy on {report.num_images:,} test images, and its change against Keras")
    confusion = None
    int8 = report.format(INT8)
    if int8 is not None:
        confusion = out / CONFUSION_PNG
        plot_confusion(np.asarray(int8.confusion), report.labels, confusion,
                       f"int8 TFLite on {report.num_images:,} test images ({format_percent(int8.accuracy)})")
    training_plot = out / TRAINING_PLOT
    pictures = {"per_class": per_class.name if per_class else None, "confusion": confusion.name if confusion else None,
                "training": training_plot.name if training_plot.is_file() else None}
    data = report.to_dict()
    data["pictures"] = pictures
    data["threshold_failures"] = list(failures)
    json_path = out / REPORT_JSON
    write_text(json_path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    markdown = out / REPORT_MD
    write_text(markdown, render_markdown(report, pictures, failures))
    return ReportFiles(markdown=markdown, json=json_path, confusion=confusion, per_class=per_class)
