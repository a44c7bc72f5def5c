"""Training curves: train and validation accuracy per epoch, saved as a PNG (the plot the recipe ends with).

matplotlib is imported inside the function and drawn on an Agg canvas directly, without pyplot, so
nothing global (backend, current figure) changes and no display is needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Sequence

from edge_runtime.atomic import atomic_path

FIGURE_SIZE_INCHES = (6.4, 4.4)
FIGURE_DPI = 100
# A little above 1 so that a curve at 100% is not hidden by the frame.
ACCURACY_AXIS_TOP = 1.02
CURVES = (("accuracy", "training accuracy"), ("val_accuracy", "validation accuracy"))


def plot_training_curves(history: Mapping[str, Sequence[float]], path: str | os.PathLike,
                         title: str = "Accuracy per epoch") -> Path:
    """Draw `history["accuracy"]` and, when present, `history["val_accuracy"]` against the epoch; write `path` atomically."""
    if not history.get("accuracy"):
        raise ValueError("history has no 'accuracy' values to plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=FIGURE_SIZE_INCHES, dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for key, label in CURVES:
        values = list(history.get(key) or [])
        if values:
            axes.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
    axes.set_xlabel("Epoch")
    axes.set_ylabel("Accuracy")
    axes.set_ylim(0.0, ACCURACY_AXIS_TOP)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    axes.set_title(title)
    figure.tight_layout()
    final = Path(path)
    with atomic_path(final) as tmp:
        figure.savefig(tmp, format="png")
    return final
