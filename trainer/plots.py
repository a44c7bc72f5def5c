"""Training curves: accuracy and loss per epoch, training and validation, with the kept epoch marked.

matplotlib is imported inside the function and drawn on an Agg canvas directly, without pyplot, so
nothing global (backend, current figure) changes and no display is needed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

from edge_runtime.atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover - matplotlib is imported lazily
    from matplotlib.figure import Figure

FIGURE_SIZE_INCHES = (10.0, 4.2)
FIGURE_DPI = 100
# A little above 1 so that a curve at 100% is not hidden by the frame.
ACCURACY_AXIS_TOP = 1.02
LOSS_AXIS_HEADROOM = 1.1
# Up to this many epochs every epoch gets a tick; beyond, matplotlib picks integer ticks.
MAX_LABELLED_EPOCHS = 20
KEPT_COLOUR = "tab:red"
PANELS = (
    ("Accuracy", (("accuracy", "training"), ("val_accuracy", "validation"))),
    ("Loss", (("loss", "training"), ("val_loss", "validation"))),
)


def plot_training_curves(history: Mapping[str, Sequence[float]], path: str | os.PathLike,
                         title: str = "Training curves", kept_epoch: int | None = None) -> Path:
    """Draw accuracy and loss per epoch side by side and, when given, mark `kept_epoch` (1-based) on
    both; write `path` atomically. Needs at least `history["accuracy"]`."""
    figure = training_figure(history, title, kept_epoch)
    final = Path(path)
    with atomic_path(final) as tmp:
        figure.savefig(tmp, format="png")
    return final


def training_figure(history: Mapping[str, Sequence[float]], title: str = "Training curves",
                    kept_epoch: int | None = None) -> "Figure":
    """The matplotlib Figure of `plot_training_curves`: an accuracy panel and a loss panel."""
    if not history.get("accuracy"):
        raise ValueError("history has no 'accuracy' values to plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = len(history["accuracy"])
    figure = Figure(figsize=FIGURE_SIZE_INCHES, dpi=FIGURE_DPI)
    FigureCanvasAgg(figure)
    for index, (name, curves) in enumerate(PANELS, start=1):
        axes = figure.add_subplot(1, len(PANELS), index)
        for key, label in curves:
            values = list(history.get(key) or [])
            if values:
                axes.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=label)
        if kept_epoch is not None and 1 <= kept_epoch <= epochs:
            axes.axvline(kept_epoch, color=KEPT_COLOUR, linestyle="--", linewidth=1,
                         label=f"kept: epoch {kept_epoch}")
            kept_values = [history[key][kept_epoch - 1] for key, _ in curves
                           if len(history.get(key) or []) >= kept_epoch]
            axes.plot([kept_epoch] * len(kept_values), kept_values, linestyle="none", marker="o",
                      markersize=7, markerfacecolor="none", markeredgecolor=KEPT_COLOUR)
        axes.set_xlabel("Epoch")
        axes.set_ylabel(name)
        axes.set_xlim(0.5, epochs + 0.5)
        if epochs <= MAX_LABELLED_EPOCHS:
            axes.set_xticks(range(1, epochs + 1))
        else:
            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if name == "Accuracy":
            axes.set_ylim(0.0, ACCURACY_AXIS_TOP)
        else:
            losses = [v for key, _ in curves for v in (history.get(key) or []) if v == v]  # v == v drops NaN
            axes.set_ylim(0.0, LOSS_AXIS_HEADROOM * max(losses) if losses and max(losses) > 0 else None)
        axes.grid(alpha=0.3)
        if index == 1:  # one legend, where the accuracy panel is empty; the loss panel uses the same colours
            axes.legend(loc="lower right", fontsize="small")
        axes.set_title(name)
    figure.suptitle(title)
    figure.tight_layout()
    return figure
