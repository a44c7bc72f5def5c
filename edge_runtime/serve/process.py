"""The live view's web server in a process of its own, fed the run's results and frames.

Why a process: in one process the classification loop and the web server (uvicorn, Starlette, the
JPEG thread) take turns on one GIL. On two cores, under 20 video viewers and 50 requests a second,
that cost the classification rate up to 20% (BENCHMARKS.md, "Live view under load"). In its own
process the server has the other core and the classification thread never waits for it.

The classifying process holds a `ViewProcess`. `publish` only keeps references (the latest result,
the latest frame and how many frames were classified since the last message); a sender thread
passes them on through a pipe, twice per --serve-fps frame, results coalesced, and attaches a
frame only while a video viewer watches and at most `--serve-fps` times a second. The server's
process keeps its own `LiveHub` and serves it exactly as an in-process server would.

What needs the run's own state is asked back over a second pipe and answered in the classifying
process by `handle(kind, argument)`: "classify" (an upload, on the run's second interpreter),
"capture" (save the current full-resolution frame) and "capture_classes" (the folders saved to).

The server's process is a new Python (`python -c`, not a fork: the interpreter's threads must not
be copied, and not multiprocessing's spawn, which starts a resource tracker process besides), given
its three pipe ends as file descriptors; its settings are the first message on the feed. It
ignores Ctrl-C, which the terminal sends to both: the classifying process ends the run and stops
it. It stops on SIGTERM (systemd stops every process of the unit) and when the classifying process
is gone (its pipe ends), so it never outlives the run.
"""

from __future__ import annotations

import dataclasses
import errno as errno_codes
import logging
import signal
import threading
import time
from typing import Any, Callable

from ..errors import EdgeError, MissingPackageError
from .server import MISSING_EXTRA_MESSAGE, ServeError, local_url, serve_extra_installed

logger = logging.getLogger(__name__)

# Results reach the server's process this many times per --serve-fps frame (the latest of the
# frames in between, counted): twice the rate at which the page shows them, 20 a second by default.
# More often costs the classification loop more than it gives (measured: 100 a second took 15-20% of
# the no-viewer frame rate on 2 cores).
FEEDS_PER_SHOWN_FRAME = 2
# Spawning a Python and importing Starlette and uvicorn takes a few seconds on a Pi.
START_TIMEOUT_S = 30.0
# How long stopping waits for the server's process before it is terminated, then killed.
STOP_TIMEOUT_S = 8.0
KILL_TIMEOUT_S = 2.0
# The server's process runs at a lower priority: when the cores are short, classification goes first
# (the page then lags; the answers do not).
SERVER_NICENESS = 10
CHILD_COMMAND = "from edge_runtime.serve.process import child_main; child_main()"
PACKAGE_LOGGER = "edge_runtime"

Handler = Callable[[str, Any], Any]


@dataclasses.dataclass(frozen=True)
class ViewConfig:
    """What the server's process needs to serve (all of it picklable)."""

    host: str
    port: int
    token: str | None
    serve_fps: float
    model_facts: dict[str, Any]
    labels: list[str]
    capture: bool  # whether the run saves frames (--save)
    verbose: bool = False  # the package's debug log, as -v gives it


class RemoteError(EdgeError):
    """An error raised in the classifying process while answering the server's process; `errno`
    kept so the server answers a full disk with 507 as it would in one process."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class ViewProcess:
    """The classifying process's side: starts the server's process, feeds it, answers it, stops it."""

    def __init__(self, config: ViewConfig, handle: Handler) -> None:
        self.config = config
        self.port: int | None = None
        self._handle = handle
        self._cond = threading.Condition(threading.Lock())  # a plain lock: publish runs for every frame
        self._pending = 0  # frames classified since the last message
        self._status: Any = None
        self._frame: Any = None  # a frame kept for the video, only while it is due one
        self._capture_waiting = 0  # requests waiting for the next frame (the page's save control)
        self._captured: tuple[Any, Any] | None = None
        self._source_ended = False
        self._finish: tuple[str, str | None] | None = None
        self._closing = False
        self._frame_due = 0.0
        self._frame_interval_s = 1.0 / config.serve_fps
        self._feed_interval_s = self._frame_interval_s / FEEDS_PER_SHOWN_FRAME
        self._process: Any = None
        self._feed: Any = None
        self._control: Any = None
        self._watching: Any = None  # the server process says here whether anyone watches the video
        self._watched = False
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        return local_url(self.config.host, self.port if self.port is not None else self.config.port)

    def next_frame(self, timeout_s: float) -> tuple[Any, Any] | None:
        """The next classified frame and its result, for saving it; None when none comes within
        `timeout_s` or the source has ended. (Frames are never kept just in case: holding on to
        each frame until the next one arrives cost a fifth of the frame rate, measured.)"""
        deadline = time.monotonic() + timeout_s
        with self._cond:
            self._capture_waiting += 1
            try:
                mine = self._captured = None
                while mine is None and not self._source_ended:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                    mine = self._captured
                return mine
            finally:
                self._capture_waiting -= 1
                self._captured = None  # not kept beyond the request

    def start(self) -> None:
        """Start the server's process and wait until it serves; ServeError (one line) when it
        cannot, MissingPackageError without the [serve] extra."""
        if not serve_extra_installed():
            raise MissingPackageError(MISSING_EXTRA_MESSAGE)
        import subprocess
        import sys
        from multiprocessing.connection import Pipe

        feed_reader, self._feed = Pipe(duplex=False)
        self._control, child_control = Pipe(duplex=True)
        self._watching, watching_writer = Pipe(duplex=False)
        child_ends = (feed_reader, child_control, watching_writer)
        descriptors = [end.fileno() for end in child_ends]
        where = f"{self.config.host}:{self.config.port}"
        try:
            self._process = subprocess.Popen([sys.executable, "-c", CHILD_COMMAND, *map(str, descriptors)],
                                             pass_fds=descriptors)
        except OSError as error:
            raise ServeError(f"cannot serve on {where}: cannot start the server's process "
                             f"({error.strerror or error})") from error
        finally:
            for end in child_ends:
                end.close()
        try:
            self._feed.send(self.config)
            if not self._control.poll(START_TIMEOUT_S):
                raise ServeError(f"cannot serve on {where}: the server did not start in {START_TIMEOUT_S:.0f} s")
            reply = self._control.recv()
        except (EOFError, OSError) as error:
            self._end_process()
            raise ServeError(f"cannot serve on {where}: the server's process ended "
                             f"(exit code {self._process.poll()})") from error
        except ServeError:
            self._end_process()
            raise
        if reply[0] != "started":
            self._end_process()
            raise (MissingPackageError if reply[0] == "missing" else ServeError)(reply[1])
        self.port = reply[1]
        for target, name in ((self._send_loop, "live-view-feed"), (self._answer_loop, "live-view-requests")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    # The classification thread's side: keeps references only, and a frame only when it is wanted.

    def publish(self, frame: Any, status: Any) -> None:
        """The latest classified frame and its result (the frame must not be changed afterwards)."""
        with self._cond:
            self._pending += 1
            self._status = status
            if self._watched and self._frame is None and time.monotonic() >= self._frame_due:
                self._frame = frame  # the video's next picture; the sender lets go of it
            if self._capture_waiting:
                self._captured = (frame, status)
                self._cond.notify_all()
            else:
                self._cond.notify()

    def finish(self, message: str, error: str | None = None) -> None:
        """The source ended or was lost: the server's page and streams say so."""
        with self._cond:
            self._finish = (message, error)
            self._source_ended = True
            self._cond.notify_all()

    def stop(self) -> None:
        """Send what is left, stop the server's process (terminated if it does not stop) and wait."""
        with self._cond:
            if self._finish is None and not self._closing:
                self._finish = ("the live view stopped", None)
            self._closing = True
            self._cond.notify()
        for thread in self._threads[:1]:  # the sender: its last message is "stop"
            thread.join(STOP_TIMEOUT_S)
        self._end_process()
        for thread in self._threads[1:]:
            thread.join(KILL_TIMEOUT_S)

    # Threads of the classifying process.

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and self._finish is None and not self._closing:
                    self._cond.wait()
                count, status, frame, finish = self._pending, self._status, self._frame, self._finish
                self._pending = 0
                self._frame = None
                self._finish = None
                closing = self._closing
            try:
                if count:
                    self._feed.send(("result", count, status, self._frame_to_send(frame)))
                if finish is not None:
                    self._feed.send(("finish", finish[0], finish[1]))
                if closing:
                    self._feed.send(("stop",))
                    return
            except (OSError, ValueError, EOFError):  # its pipes are closed
                if not closing:
                    self._report_end()
                return
            time.sleep(self._feed_interval_s)

    def _report_end(self) -> None:
        """The server's process ended before the run: said as a warning unless it stopped as asked
        (exit 0: SIGTERM, which systemd sends to both processes of the unit)."""
        import subprocess

        try:
            code = self._process.wait(KILL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            code = None
        log = logger.info if code == 0 else logger.warning
        log("the live view's server process has ended (exit code %s); classifying goes on", code)

    def _frame_to_send(self, frame: Any) -> Any:
        """`frame` (kept by `publish` while the video was due one) when someone still watches."""
        while self._watching.poll():  # the latest word of the server's process
            self._watched = self._watching.recv()
        if frame is None or not self._watched:
            return None
        self._frame_due = time.monotonic() + self._frame_interval_s
        return frame

    def _answer_loop(self) -> None:
        while True:
            try:
                kind, argument = self._control.recv()
            except (EOFError, OSError):
                return  # the server's process has ended
            try:
                reply: tuple[Any, ...] = ("ok", self._handle(kind, argument))
            except EdgeError as error:
                reply = ("error", str(error), getattr(error, "errno", None))
            except OSError as error:
                reply = ("error", f"{error.strerror or error}", error.errno)
            except Exception:  # a bug: logged here with its traceback, a one-line 500 there
                logger.exception("the live view's %s request failed", kind)
                reply = ("error", f"the {kind} request failed unexpectedly; the log says why", errno_codes.EIO)
            try:
                self._control.send(reply)
            except (OSError, ValueError):
                return

    def _end_process(self) -> None:
        process = self._process
        if process is None:
            return
        import subprocess

        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("the live view's server process did not stop in %.0f s; terminating it", STOP_TIMEOUT_S)
            process.terminate()
            try:
                process.wait(KILL_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for conn in (self._feed, self._control, self._watching):
            if conn is not None:
                conn.close()


# The server's process.

class _Stopped(Exception):
    """SIGTERM in the server's process."""


def _raise_stopped(signum: int, frame: object) -> None:
    raise _Stopped


class _ParentCalls:
    """The server's callables that the classifying process answers, one request at a time."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = threading.Lock()

    def call(self, kind: str, argument: Any) -> Any:
        with self._lock:
            try:
                self._conn.send((kind, argument))
                reply = self._conn.recv()
            except (EOFError, OSError) as error:
                raise OSError(errno_codes.EPIPE, "the classifying process has ended") from error
        if reply[0] == "ok":
            return reply[1]
        raise RemoteError(reply[1], reply[2])

    def classify(self, image: bytes) -> dict[str, Any]:
        return self.call("classify", image)

    def capture(self, label: str) -> dict[str, Any]:
        return self.call("capture", label)

    def capture_classes(self) -> list[str]:
        return self.call("capture_classes", None)


def child_main() -> None:
    """The server's process (`python -c CHILD_COMMAND FEED CONTROL WATCHING`): serve a LiveHub fed
    from the feed until told to stop, SIGTERM, or the classifying process is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _raise_stopped)
    import os
    import sys

    try:
        os.nice(SERVER_NICENESS)
    except OSError:  # not allowed here: serve at the same priority
        pass
    from multiprocessing.connection import Connection

    feed, control, watching = (Connection(int(descriptor)) for descriptor in sys.argv[1:4])
    try:
        config: ViewConfig = feed.recv()
    except (_Stopped, EOFError, OSError):
        return
    if config.verbose:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        package_logger = logging.getLogger(PACKAGE_LOGGER)
        package_logger.addHandler(handler)
        package_logger.setLevel(logging.DEBUG)
    from .app import build_app
    from .hub import LiveHub
    from .server import start_server

    calls = _ParentCalls(control)
    hub = LiveHub(config.model_facts, config.labels)
    server = None
    try:
        try:
            app = build_app(hub, token=config.token, serve_fps=config.serve_fps, classify_upload=calls.classify,
                            capture=calls.capture if config.capture else None,
                            capture_classes=calls.capture_classes if config.capture else None)
            server = start_server(app, config.host, config.port)
        except MissingPackageError as error:
            control.send(("missing", str(error)))
            return
        except EdgeError as error:
            control.send(("failed", str(error)))
            return
        control.send(("started", server.port))
        _feed_hub(hub, feed, watching)
    except (_Stopped, EOFError, OSError):
        pass
    finally:
        if server is not None:
            try:
                server.stop()
            except _Stopped:
                pass


def _feed_hub(hub: Any, feed: Any, watching: Any) -> None:
    """Publish what the classifying process sends until it says stop (or is gone: EOFError), and
    tell it on `watching` whenever video viewers come or all go (it sends frames only meanwhile)."""
    watched = False
    while True:
        message = feed.recv()
        if message[0] == "result":
            _, count, status, frame = message
            hub.publish(frame, status, frames=count)
        elif message[0] == "finish":
            _, text, error = message
            hub.finish(text, error)
        elif message[0] == "stop":
            return
        if bool(hub.viewers) != watched:
            watched = not watched
            watching.send(watched)
