"""What happens at each epoch: the Keras callback that records the history, shows the epoch's line and
checkpoints it, and on a terminal the status line redrawn within the epoch."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from .checkpoint import write_checkpoint
from .progress import Progress

if TYPE_CHECKING:  # pragma: no cover
    import keras

STATUS_INTERVAL_SECONDS = 0.5  # how often the in-epoch status line is redrawn on a terminal


def epoch_callback(folder: Path, history: dict[str, list[float]], recipe: dict[str, Any],
                   class_names: Sequence[str], epochs: int, batch_size: int, prior_seconds: float,
                   progress: Progress) -> "keras.callbacks.Callback":
    """A Keras callback that shows progress and checkpoints every epoch (built lazily: Keras is heavy).

    On a terminal it also redraws one status line within the epoch (step, images/s, time left);
    elsewhere (a log file, CI) it prints one line per epoch only.
    """
    import keras

    class EpochCheckpoint(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.epochs_completed = 0
            self.checkpoint_seconds = 0.0  # reported, to show what checkpointing costs
            self.fit_started = time.perf_counter()
            self.epoch_started = self.fit_started
            self.epoch_number = 0
            self.last_status = 0.0
            self.first_step_seconds: float | None = None  # when step 1 of this epoch ended, from its start

        def on_train_begin(self, logs: dict | None = None) -> None:
            self.fit_started = time.perf_counter()

        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.epoch_started = self.last_status = time.perf_counter()
            self.epoch_number = epoch + 1
            self.first_step_seconds = None

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            now = time.perf_counter()
            progress.end_status()
            for key, value in sorted((logs or {}).items()):
                history.setdefault(key, []).append(float(value))
            metrics = "  ".join(f"{key} {float(value):.4f}" for key, value in sorted((logs or {}).items()))
            progress.message(f"epoch {epoch + 1}/{epochs}  {metrics}  ({now - self.epoch_started:.1f} s)")
            write_checkpoint(folder, self.model, epoch + 1, history, recipe, class_names,
                             prior_seconds + (now - self.fit_started))
            self.checkpoint_seconds += time.perf_counter() - now
            self.epochs_completed = epoch + 1

    class EpochCheckpointWithStatus(EpochCheckpoint):
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            now = time.perf_counter()
            if batch == 0:
                self.first_step_seconds = now - self.epoch_started
            if now - self.last_status < STATUS_INTERVAL_SECONDS:
                return
            self.last_status = now
            steps = self.params.get("steps") or 0
            progress.status(epoch_status(self.epoch_number, epochs, batch + 1, steps, batch_size,
                                         now - self.epoch_started, self.first_step_seconds))

    return EpochCheckpointWithStatus() if progress.live else EpochCheckpoint()


def epoch_status(epoch: int, epochs: int, step: int, steps: int, batch_size: int, seconds: float,
                 first_step_seconds: float | None) -> str:
    """The in-epoch status line: `epoch 3/15  step 200/625  1,840 images/s  0:15 left in this epoch`.

    `seconds` have passed since the epoch began, `first_step_seconds` of them by the end of step 1.
    Step 1 also builds (and in the first epoch compiles) the graph, so the rate and the time left are
    measured over the steps after it; until one has ended, the line shows neither.
    """
    text = f"epoch {epoch}/{epochs}  step {step}/{steps or '?'}"
    per_step = step_seconds(step, seconds, first_step_seconds)
    if per_step is None:
        return text
    text += f"  {batch_size / per_step:,.0f} images/s"
    if steps:
        left = round(per_step * max(0, steps - step))
        text += f"  {left // 60}:{left % 60:02d} left in this epoch"
    return text


def step_seconds(step: int, seconds: float, first_step_seconds: float | None) -> float | None:
    """Seconds per training step after the first (which includes building the graph), from the time
    `seconds` at the end of `step` and the time at which step 1 ended; None until a later step has ended."""
    if first_step_seconds is None or step < 2 or seconds <= first_step_seconds:
        return None
    return (seconds - first_step_seconds) / (step - 1)
