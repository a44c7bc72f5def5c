"""Live classification of camera frames with one Classifier.

`classify_frames` takes any iterable of RGB frames (see `camera.frames`), classifies each with
the same interpreter, and calls `report` with a `LiveStatus` for every frame, or, with
`on_change`, only when the label changes and at most once per `REPORT_INTERVAL_S` when the shown
score or frame rate changes. `on_frame` sees every frame with its status (the live view and the
frame saver hang there). It stops after
`max_frames`, at the end of a video, on Ctrl-C, or when the source is lost, and returns a
summary either way. A model that fails to run raises ModelError instead: it would fail on every
frame, and the caller reports it once.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Any, Callable, Iterable

import numpy as np

from ..classify import Class, Classifier, top_classes
from ..output import LABEL_SEPARATOR, UNCERTAIN_LABEL
from ..preprocess import array_to_input
from .camera import CameraError

REPORT_INTERVAL_S = 1.0
# Frame rate is smoothed over roughly this many frames so the number shown does not flicker.
FPS_SMOOTHING_FRAMES = 10
SCORE_DIGITS = 2


@dataclasses.dataclass(frozen=True)
class LiveStatus:
    """The answer for one classified frame.

    `frame` counts classified frames from 1; `label` is the best class, or "uncertain" under the
    threshold (`score` is still the best score); `classes` are the top-k, best first; `fps` is the
    smoothed rate of classified frames; `latency_ms` the preprocessing and inference of this frame;
    `timestamp` the wall-clock time (time.time()) it was classified.
    """

    frame: int
    label: str
    score: float
    fps: float
    uncertain: bool
    classes: tuple[Class, ...] = ()
    latency_ms: float = 0.0
    timestamp: float = 0.0

    def line(self) -> str:
        if len(self.classes) > 1:
            shown = LABEL_SEPARATOR.join(f"{c.label} {c.score:.{SCORE_DIGITS}f}" for c in self.classes)
            text = f"{UNCERTAIN_LABEL} ({shown})" if self.uncertain else shown
        else:
            text = f"{self.label} {self.score:.{SCORE_DIGITS}f}"
        return f"{text}  {self.fps:.1f} fps"

    def to_dict(self) -> dict[str, Any]:
        """The JSON line of `--camera --json`: numbers rounded, `uncertain` only when it is."""
        record: dict[str, Any] = {"frame": self.frame, "label": self.label, "score": round(self.score, 6)}
        if self.classes:
            record["top_k"] = [{"label": c.label, "score": round(c.score, 6)} for c in self.classes]
        record["fps"] = round(self.fps, 2)
        record["latency_ms"] = round(self.latency_ms, 3)
        if self.timestamp:
            record["time"] = round(self.timestamp, 3)
        if self.uncertain:
            record["uncertain"] = True
        return record


@dataclasses.dataclass
class LiveSummary:
    """What a live run did, and why it stopped."""

    frames: int = 0
    seconds: float = 0.0
    label_counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    stopped_by: str = "end of stream"
    error: str | None = None

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        text = f"{self.frames} frames in {self.seconds:.1f} s ({self.fps:.1f} fps), stopped by {self.stopped_by}"
        if self.label_counts:
            label, count = self.label_counts.most_common(1)[0]
            text += f"; most frequent: {label} ({count / self.frames:.0%} of frames)"
        return text


def classify_frames(classifier: Classifier, frames: Iterable[np.ndarray],
                    report: Callable[[LiveStatus], None], max_frames: int | None = None,
                    threshold: float = 0.0, clock: Callable[[], float] = time.perf_counter,
                    top_k: int = 1, on_change: bool = False,
                    on_frame: Callable[[np.ndarray, LiveStatus], None] | None = None,
                    wall_clock: Callable[[], float] = time.time) -> LiveSummary:
    """Classify frames until `max_frames`, the end of the source, Ctrl-C or a lost source.

    `report` gets every frame's status, or with `on_change` those `worth_reporting`; `on_frame`
    gets every frame (RGB, as the source gave it) with its status, after `report`.
    """
    summary = LiveSummary()
    spec = classifier.spec
    shown: LiveStatus | None = None
    shown_at = 0.0
    smoothing = 1.0 / FPS_SMOOTHING_FRAMES
    frame_interval = 0.0
    started = previous = clock()
    try:
        if max_frames is not None and max_frames <= 0:
            summary.stopped_by = "--frames"
            return summary
        for frame in frames:
            began = clock()
            classes = top_classes(classifier.scores(array_to_input(frame, spec)), classifier.labels, top_k)
            now = clock()
            interval = now - previous
            previous = now
            frame_interval = interval if summary.frames == 0 else (
                frame_interval + smoothing * (interval - frame_interval))
            summary.frames += 1
            # No classes at all only when the scores are NaN: shown as uncertain, like a low score.
            score = classes[0].score if classes else 0.0
            uncertain = not classes or score < threshold
            label = UNCERTAIN_LABEL if uncertain else classes[0].label
            summary.label_counts[label] += 1
            status = LiveStatus(summary.frames, label, score,
                                1.0 / frame_interval if frame_interval > 0 else 0.0, uncertain,
                                tuple(classes), (now - began) * 1000.0, wall_clock())
            if not on_change or worth_reporting(shown, status, now - shown_at):
                report(status)
                shown, shown_at = status, now
            if on_frame is not None:
                on_frame(frame, status)
            if max_frames is not None and summary.frames >= max_frames:
                summary.stopped_by = "--frames"
                break
    except KeyboardInterrupt:
        summary.stopped_by = "Ctrl-C"
    except CameraError as error:
        summary.stopped_by = "a lost source"
        summary.error = str(error)
    finally:
        summary.seconds = clock() - started
    return summary


def classify_source(classifier: Classifier, source: str | None, report: Callable[[LiveStatus], None],
                    notify: Callable[[str], None], max_frames: int | None = None,
                    threshold: float = 0.0, top_k: int = 1, on_change: bool = False,
                    on_frame: Callable[[np.ndarray, LiveStatus], None] | None = None,
                    loop: bool = False) -> LiveSummary:
    """Open a frame source (`camera.open_source`: None for the automatic choice; `loop` replays a
    video file), say which to `notify`, and classify its frames as `classify_frames` does; the
    source is closed either way."""
    from .camera import frames, open_source

    frame_source = open_source(source, loop=loop)
    with frame_source:
        notify(f"classifying frames from {frame_source.description}; Ctrl-C stops")
        return classify_frames(classifier, frames(frame_source, notify=notify), report,
                               max_frames=max_frames, threshold=threshold, top_k=top_k, on_change=on_change,
                               on_frame=on_frame)


def worth_reporting(shown: LiveStatus | None, status: LiveStatus, since_shown_s: float) -> bool:
    """A new label always; a changed score or rate only after the report interval."""
    if shown is None or status.label != shown.label:
        return True
    if since_shown_s < REPORT_INTERVAL_S:
        return False
    return (round(status.score, SCORE_DIGITS) != round(shown.score, SCORE_DIGITS)
            or round(status.fps) != round(shown.fps))
