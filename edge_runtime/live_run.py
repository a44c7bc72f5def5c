"""A live run: camera frames classified into result lines, saved frames and the browser view.

`run_live` is what `edge-classify --camera` does, below its options: it writes one line per
classified frame (or, with `on_change`, as the answer changes) to stdout or appends them to a
file, hands every frame to the frame saver (`--save`) and to the live view (`--serve`), and when
the source ends keeps the live view up until Ctrl-C so the page can say so. The saver and the web
server are imported only when asked for: the plain camera run needs neither.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, TextIO

from .errors import EdgeError

if TYPE_CHECKING:  # annotations only
    import numpy as np

    from .capture import FrameSaver, SaveRule
    from .classify import Classifier
    from .serve.process import ViewProcess
    from .sources.live import LiveStatus, LiveSummary

logger = logging.getLogger(__name__)

UPLOAD_NAME = "upload"
# The page's save control saves the next frame classified; it waits at most this long for one.
CAPTURE_WAIT_S = 5.0
# After the source ends, how often the waiting main thread wakes to notice Ctrl-C.
IDLE_WAKE_S = 0.5


class OutputError(EdgeError):
    """The result lines cannot be written (the -o file cannot be opened, or the disk is full)."""


@dataclasses.dataclass(frozen=True)
class SaveOptions:
    """`--save DIR`, `--save-when RULE`..., `--save-max N`."""

    folder: str
    rules: tuple[SaveRule, ...]
    per_minute: int


@dataclasses.dataclass(frozen=True)
class ServeOptions:
    """`--serve [HOST:]PORT`, `--token`, `--serve-fps`."""

    host: str
    port: int
    token: str | None
    fps: float


@dataclasses.dataclass(frozen=True)
class LiveOptions:
    """What a live run does with its frames."""

    source: str | None  # None: the automatic choice
    max_frames: int | None = None
    as_json: bool = False
    top_k: int = 1
    threshold: float = 0.0
    on_change: bool = False
    loop: bool = False
    output: str | None = None
    save: SaveOptions | None = None
    serve: ServeOptions | None = None


@dataclasses.dataclass
class LiveOutcome:
    """How a live run ended: the classification summary, and what went wrong beside it."""

    summary: LiveSummary
    save_error: str | None = None
    saved_line: str | None = None


class LineSink:
    """Where result lines go: stdout, flushed per line, or a file opened for appending.

    Each line goes to the file in one `os.write` on an O_APPEND descriptor, so a line is never
    torn, not even by another process appending to the same file (a second run, logrotate's
    copytruncate); a short write (a full disk) is finished or reported, never left half.
    """

    def __init__(self, path: str | None = None, stream: TextIO | None = None):
        self.path = path
        self._stream = stream if stream is not None else sys.stdout
        self._fd: int | None = None
        if path is not None:
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as error:
                raise OutputError(f"{path}: cannot write results ({error.strerror or error})") from error

    def write_line(self, text: str) -> None:
        if self._fd is None:
            self._stream.write(text + "\n")
            self._stream.flush()
            return
        data = (text + "\n").encode("utf-8")
        try:
            written = os.write(self._fd, data)
            while written < len(data):  # only a nearly full disk writes less; finish the line or fail
                written += os.write(self._fd, data[written:])
        except OSError as error:
            raise OutputError(f"{self.path}: cannot write results ({error.strerror or error})") from error

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


def classify_upload(classifier: Classifier, data: bytes, top_k: int, threshold: float) -> dict[str, Any]:
    """An uploaded image file's answer, read, scored and written as `--json` writes a file's."""
    import io

    from .batch import NO_USABLE_SCORES
    from .classify import top_classes
    from .output import JsonWriter
    from .preprocess import load_image_bytes

    started = time.perf_counter()
    pixels = load_image_bytes(data, classifier.spec, name=UPLOAD_NAME)
    scores = classifier.scores(pixels)
    latency_ms = (time.perf_counter() - started) * 1000.0
    classes = top_classes(scores, classifier.labels, top_k)
    if not classes:  # NaN scores, as for a file
        raise EdgeError(f"{UPLOAD_NAME}: {NO_USABLE_SCORES}")
    line = io.StringIO()
    JsonWriter(line).result(UPLOAD_NAME, classes, classes[0].score < threshold, latency_ms)
    return json.loads(line.getvalue())


class _UploadClassifier:
    """Classifies uploads with an interpreter of their own, built on the first upload.

    The camera loop owns the run's interpreter, and an interpreter must not run in two threads
    at once; uploads take turns on a second one, so the camera never waits for them.
    """

    def __init__(self, make_classifier: Callable[[], Classifier], top_k: int, threshold: float):
        self._make = make_classifier
        self._classifier: Classifier | None = None
        self._lock = threading.Lock()
        self._top_k = top_k
        self._threshold = threshold

    def __call__(self, data: bytes) -> dict[str, Any]:
        with self._lock:
            if self._classifier is None:
                self._classifier = self._make()
            return classify_upload(self._classifier, data, self._top_k, self._threshold)


def _same_model(classifier: Classifier) -> Callable[[], Classifier]:
    """A maker of another Classifier of the same model file and backend."""
    from .classify import Classifier

    return lambda: Classifier(classifier.model_path, backend=classifier.backend)


def _make_saver(save: SaveOptions) -> FrameSaver:
    """The frame saver of `--save`, its folder made and checked now rather than at the first save."""
    from .capture import CaptureError, FrameSaver

    try:
        os.makedirs(save.folder, exist_ok=True)
    except OSError as error:
        raise CaptureError(f"{save.folder}: cannot save frames there ({error.strerror or error})") from error
    if not os.access(save.folder, os.W_OK | os.X_OK):
        raise CaptureError(f"{save.folder}: cannot save frames there (not writable)")
    return FrameSaver(save.folder, save.rules, per_minute=save.per_minute)


def _start_view(classifier: Classifier, options: LiveOptions, make_classifier: Callable[[], Classifier],
                saver: FrameSaver | None, notify: Callable[[str], None]) -> ViewProcess:
    """Start the web server of `--serve` in its own process (see `serve.process`), answering what
    it asks of this run: uploads classified, frames saved, the classes saved to."""
    from .info import model_facts
    from .serve.process import ViewConfig, ViewProcess
    from .serve.server import bind_policy

    serve = options.serve
    token, warning = bind_policy(serve.host, serve.token, port=serve.port)
    uploads = _UploadClassifier(make_classifier, options.top_k, options.threshold)

    def capture(label: str) -> dict[str, Any]:
        taken = view.next_frame(CAPTURE_WAIT_S)
        if taken is None:
            raise EdgeError(f"no frame to save: the camera delivered none in {CAPTURE_WAIT_S:.0f} s, "
                            "or it has stopped")
        frame, status = taken
        saved = saver.save(frame, label, status)
        # `path` as the device has it (the folder as --save gave it), `file` within that folder.
        return {"path": str(saved.path), "file": saved.file, "label": saved.label, "time": saved.time}

    def handle(kind: str, argument: Any) -> Any:
        if kind == "classify":
            return uploads(argument)
        if kind == "capture" and saver is not None:
            return capture(argument)
        if kind == "capture_classes" and saver is not None:
            return saver.folder_labels()
        raise EdgeError(f"the live view asked for {kind!r}, which this run does not do")

    verbose = logging.getLogger(__package__).isEnabledFor(logging.DEBUG)
    config = ViewConfig(serve.host, serve.port, token, serve.fps, model_facts(classifier),
                        list(classifier.labels or []), capture=saver is not None, verbose=verbose)
    view = ViewProcess(config, handle)
    view.start()
    if warning:  # another address than loopback: says how to open the page, token included
        notify(f"warning: {warning}")
    else:
        notify(f"live view: {view.url}" + (f"?token={token}" if token else ""))
    return view


def run_live(classifier: Classifier, options: LiveOptions, notify: Callable[[str], None],
             make_classifier: Callable[[], Classifier] | None = None,
             stdout: TextIO | None = None) -> LiveOutcome:
    """Classify the frames of `options.source` until it ends, `max_frames`, Ctrl-C or a lost source.

    `make_classifier` builds a second classifier like the first, for the live view's uploads (an
    interpreter must not run in two threads at once); without it one is made from the model file
    with the same backend, and the model's own labels.
    Raises EdgeError before any frame for a bad source, output, save folder or address; a model
    that cannot run raises ModelError. SIGTERM (systemd's stop) ends the run as Ctrl-C does.
    """
    from .sources.live import classify_source

    sink = LineSink(options.output, stdout)
    saver = None
    view = None
    save_error: list[str] = []
    try:
        if options.save is not None:
            saver = _make_saver(options.save)
        if options.serve is not None:
            view = _start_view(classifier, options, make_classifier or _same_model(classifier), saver, notify)

        def report(status: LiveStatus) -> None:
            sink.write_line(json.dumps(status.to_dict()) if options.as_json else status.line())

        def on_frame(frame: np.ndarray, status: LiveStatus) -> None:
            if view is not None:
                view.publish(frame, status)
            if saver is not None and not save_error:
                saver.consider(frame, status)
                if saver.error is not None:  # a full disk: said once, and rule saves stop; classifying goes on
                    save_error.append(str(saver.error))
                    notify(f"error: {saver.error}; no more frames are saved by the rules")

        with _sigterm_as_interrupt():
            summary = classify_source(classifier, options.source, report, notify, max_frames=options.max_frames,
                                      threshold=options.threshold, top_k=options.top_k,
                                      on_change=options.on_change, on_frame=on_frame, loop=options.loop)
            if view is not None:
                view.finish(summary.line(), summary.error)
                if summary.error is None and summary.stopped_by != "Ctrl-C":
                    notify(f"{summary.line()}; the live view stays up until Ctrl-C")
                    _wait_for_interrupt()
    finally:
        if view is not None:
            view.stop()
        sink.close()
    return LiveOutcome(summary, save_error[0] if save_error else None,
                       saver.summary_line() if saver is not None else None)


def _wait_for_interrupt() -> None:
    """Sleep until Ctrl-C (or SIGTERM, turned into it)."""
    try:
        while True:
            time.sleep(IDLE_WAKE_S)
    except KeyboardInterrupt:
        return


class _sigterm_as_interrupt:
    """While in the block, SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does, so a
    service stopped by systemd ends its run the same way: summary printed, server stopped."""

    def __enter__(self) -> None:
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, _raise_interrupt)

    def __exit__(self, *exc_info: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
