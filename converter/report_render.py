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

from .convert import FLOAT32, INT8
from .report import KERAS, PERCENT, FormatResult, Report, is_finite_number

logger = logging.getLogger(__name__)

REPORT_MD = "report.md"
REPORT_JSON = "report.json"
CONFUSION_PNG = "confusion_int8.png"
PER_CLASS_PNG = "per_class_accuracy.png"
TRAINING_CURVES_PNG = "training_curves.png"
DASH = "—"
FIGURE_DPI = 120
KIB = 1024
MIB = 1024 * 1024
# Confusion-matrix cells darker than this share of the largest count get white text.
DARK_CELL_FRACTION = 0.5
BAR_GROUP_WIDTH = 0.8


@dataclasses.dataclass(frozen=True)
class ReportFiles:
    """The files a report run wrote (None for a picture that was skipped)."""

    markdown: Path
    json: Path
    confusion: Path | None
    per_class: Path | None
    training_curves: Path | None


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
    """What `edge-report` prints: the main table and one line per size ratio."""
    text = text_table(TERMINAL_HEADERS, terminal_rows(report))
    for result in report.formats:
        ratio = report.size_ratio(result.name)
        if result.name not in (KERAS, FLOAT32) and ratio is not None:
            text += f"{result.name} file is {ratio * PERCENT:.1f}% of the float32 file's size\n"
    return text


def per_class_rows(report: Report) -> list[list[str]]:
    """One row per class: its number of test images, then each format's accuracy on it."""
    reference = report.format(KERAS) or report.formats[0]
    counts = np.sum(np.asarray(reference.confusion), axis=1)
    rows = []
    for index, label in enumerate(report.labels):
        rows.append([label, str(int(counts[index]))]
                    + [format_percent(result.per_class_accuracy[index], 1) for result in report.formats])
    return rows


def confusion_rows(result: FormatResult, labels: Sequence[str]) -> list[list[str]]:
    return [[label] + [str(count) for count in row] for label, row in zip(labels, result.confusion)]


def render_markdown(report: Report, pictures: dict[str, str | None], training_note: str | None = None,
                    failures: Sequence[str] = ()) -> str:
    """report.md: what was measured, the main table, per-class accuracy, the int8 confusion, training."""
    lines = ["# Quantization accuracy report", ""]
    input_text = ("each test image file read through `Classifier.load`, as on a device"
                  if report.image_path == "files" else "the decoded uint8 test arrays")
    lines += [f"- Test set: {report.data_source} — {report.num_images:,} images, {len(report.labels)} classes",
              f"- Keras: `model.predict` on `scale_pixels` of the test images (the training preprocessing)",
              f"- TFLite: `edge_runtime.classify.Classifier` ({report.backend or 'no'} backend, "
              f"{report.threads} thread), fed {input_text}",
              "- Agreement: share of test images whose top-1 class equals Keras'; |Δp|: absolute difference "
              "of class probabilities against Keras, over all images and classes",
              "- Latency: mean time of one `Classifier.scores` call (input quantization, invoke, output) "
              "per image over the evaluation loop"]
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
    if failures:
        lines += ["## Thresholds failed", ""] + [f"- {failure}" for failure in failures] + [""]

    lines += ["## Per-class accuracy", ""]
    headers = ["Class", "Test images"] + [result.name for result in report.formats]
    lines += [markdown_table(headers, per_class_rows(report))]
    if pictures.get("per_class"):
        lines += [f"![Per-class accuracy of every format]({pictures['per_class']})", ""]

    if int8 is not None:
        lines += ["## int8 confusion matrix", "", "Rows: true class; columns: int8's prediction.", ""]
        lines += [markdown_table(["true \\ predicted"] + list(report.labels), confusion_rows(int8, report.labels))]
        if pictures.get("confusion"):
            lines += [f"![int8 confusion matrix]({pictures['confusion']})", ""]

    lines += ["## Training", ""]
    if pictures.get("training_curves"):
        lines += [f"![Training and validation accuracy]({pictures['training_curves']})", ""]
    if training_note:
        lines += [training_note, ""]
    if report.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in report.notes] + [""]
    return "\n".join(lines).rstrip() + "\n"


# --- pictures -------------------------------------------------------------------------------------

def _new_figure(width: float, height: float) -> Any:
    # Lazy: the report's text needs no matplotlib. Agg canvas, no pyplot: no global backend state.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

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


def plot_per_class(report: Report, path: str | os.PathLike) -> None:
    """Grouped bars: each class's accuracy in every format, side by side, saved atomically as PNG."""
    labels = report.labels
    formats = report.formats
    figure = _new_figure(max(7.5, 0.9 * len(labels) + 3.5), 4.5)
    axes = figure.add_subplot()
    positions = np.arange(len(labels))
    width = BAR_GROUP_WIDTH / max(1, len(formats))
    for offset, result in enumerate(formats):
        values = [PERCENT * v if v is not None else np.nan for v in result.per_class_accuracy]
        axes.bar(positions + (offset - (len(formats) - 1) / 2) * width, values, width,
                 label=f"{result.name} ({format_percent(result.accuracy, 1)})")
    axes.set_xticks(positions, labels=list(labels), rotation=45, ha="right")
    axes.set_ylabel("top-1 accuracy (%)")
    axes.set_ylim(0, PERCENT)
    axes.set_title(f"Per-class accuracy on {report.num_images:,} test images")
    # Outside the axes: bars near 100% would hide a legend drawn inside.
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    _save(figure, path)


def _save(figure: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def write_training_curves(history: dict[str, Any] | None, path: Path) -> tuple[Path | None, str | None]:
    """Draw the training curves with the trainer's own plot; (path, None) or (None, why it was skipped)."""
    if not history or not any(history.values()):
        return None, "No training history was found (training.json is missing or has none): curves skipped."
    try:
        from trainer.plots import plot_training_curves
    except ImportError as error:
        return None, f"Training curves skipped: the trainer's plotting module is not available ({error})."
    try:
        plot_training_curves(history, path)  # writes atomically itself
    except ValueError as error:
        return None, f"Training curves skipped: {error}."
    return path, None


def write_report(report: Report, out_dir: str | os.PathLike, history: dict[str, Any] | None = None,
                 failures: Sequence[str] = ()) -> ReportFiles:
    """Write the pictures, report.json and report.md into `out_dir`, each atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    per_class = out / PER_CLASS_PNG
    plot_per_class(report, per_class)
    confusion = None
    int8 = report.format(INT8)
    if int8 is not None:
        confusion = out / CONFUSION_PNG
        plot_confusion(np.asarray(int8.confusion), report.labels, confusion,
                       f"int8 TFLite on {report.num_images:,} test images ({format_percent(int8.accuracy)})")
    curves, training_note = write_training_curves(history, out / TRAINING_CURVES_PNG)
    pictures = {"per_class": per_class.name, "confusion": confusion.name if confusion else None,
                "training_curves": curves.name if curves else None}
    data = report.to_dict()
    data["pictures"] = pictures
    data["threshold_failures"] = list(failures)
    json_path = out / REPORT_JSON
    write_text(json_path, json.dumps(data, indent=2, allow_nan=False) + "\n")
    markdown = out / REPORT_MD
    write_text(markdown, render_markdown(report, pictures, training_note, failures))
    return ReportFiles(markdown=markdown, json=json_path, confusion=confusion, per_class=per_class,
                       training_curves=curves)
