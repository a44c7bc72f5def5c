"""The state the classification thread shares with the live view's server.

In a run the hub lives in the server's own process (see `process`), published by the thread that
receives the run's results; in tests and in a single process the classification loop can publish
directly. Either way `LiveHub.publish` is called from a thread of its own; the server's
event loop reads the latest frame and result and waits for the next one. Publishing only swaps
references and bumps a version number: no copy, no encoding (the JPEG is made by `jpeg.LatestJpeg`,
only while someone watches). Waiting is event-driven: an event loop that waits registers a future,
and `publish` wakes it with `call_soon_threadsafe`, so nothing polls.

The frame handed to `publish` must not be modified afterwards (camera sources hand out a new array
for every frame): the server reads it from another thread.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import threading
import time
from typing import Any, Callable

import numpy as np

from ..sources.live import LiveStatus

logger = logging.getLogger(__name__)

# The camera counts as delivering while its last frame is at most this old.
DELIVERING_WITHIN_S = 2.0
# The frame rate /healthz reports is measured over the frames of at most this many seconds...
FPS_WINDOW_S = 5.0
# ...and at most this many frames (a bounded record of publish times).
FPS_WINDOW_FRAMES = 120


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """The latest frame and its result; `version` grows by one with every published frame."""

    version: int
    frame: np.ndarray | None
    status: LiveStatus | None
    finished: str | None
    error: str | None
    frame_version: int = 0  # the version at which `frame` last changed


class _LoopWaker:
    """The waiters of one event loop: they await `future`, which `wake` resolves and replaces.

    Touched from the loop's thread only, except `waiting` and `scheduled` (under the hub's lock).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.waiting = 0
        self.scheduled = False

    def wake(self, lock: threading.Lock) -> None:
        with lock:
            self.scheduled = False
        future, self.future = self.future, self.loop.create_future()
        if not future.done():
            future.set_result(None)


class LiveHub:
    """Latest frame, latest result and the source's state, shared between threads.

    `model_facts` (what `--info` says) and `labels` are served as they are by /api/model;
    `clock` (monotonic seconds) is replaceable for tests of the frame rate and of "delivering".
    """

    def __init__(self, model_facts: dict[str, Any], labels: list[str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.model_facts = dict(model_facts)
        self.labels = list(labels)
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._version = 0
        self._frame_version = 0
        self._frame: np.ndarray | None = None
        self._status: LiveStatus | None = None
        self._finished: str | None = None
        self._error: str | None = None
        # (publish time, version) of the latest publishes.
        self._published: collections.deque[tuple[float, int]] = collections.deque(maxlen=FPS_WINDOW_FRAMES)
        self._viewers = 0
        self._wakers: dict[asyncio.AbstractEventLoop, _LoopWaker] = {}

    # The classification thread's side.

    def publish(self, frame: np.ndarray | None, status: LiveStatus, frames: int = 1) -> None:
        """Make `frame` and its `status` the latest; wakes the server's waiting streams.

        For the server's own process (see `process`), which is sent the run's results coalesced and
        frames only while someone watches: `frames` is how many classified frames `status` stands
        for (it is the latest of them), and `frame` None keeps the last frame.
        """
        with self._lock:
            self._version += frames
            if frame is not None:
                self._frame = frame
                self._frame_version = self._version
            self._status = status
            self._published.append((self._clock(), self._version))
            to_wake = self._due_wakers()
        self._wake(to_wake)

    def finish(self, message: str, error: str | None = None) -> None:
        """The source ended (`message` says how) or was lost (`error`): the video and event streams
        end, the page says so, and the API keeps answering with the last result."""
        with self._lock:
            self._finished = message
            self._error = error
            to_wake = self._due_wakers(everyone=True)
        self._wake(to_wake)

    # The server's side.

    @property
    def version(self) -> int:
        """How many frames were published (the number of the latest)."""
        return self._version

    @property
    def finished(self) -> str | None:
        """The finish message once the source has ended, else None."""
        return self._finished

    @property
    def latest_frame(self) -> np.ndarray | None:
        """The last published frame (full resolution, as the source gave it), None before the first."""
        return self._frame

    @property
    def latest_status(self) -> LiveStatus | None:
        """The result of `latest_frame`; take `snapshot()` to have both of the same frame for sure."""
        return self._status

    def snapshot(self) -> Snapshot:
        with self._lock:
            return Snapshot(self._version, self._frame, self._status, self._finished, self._error,
                            self._frame_version)

    async def wait_newer(self, seen: int, timeout_s: float) -> None:
        """Return once a frame newer than version `seen` is published, the hub is finished, or
        `timeout_s` passed (the caller looks at `snapshot` to know which)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._version > seen or self._finished is not None:
                return
            waker = self._wakers.get(loop)
            if waker is None:
                waker = self._wakers[loop] = _LoopWaker(loop)
            waker.waiting += 1
            future = waker.future
        try:
            # shield: a timeout must not cancel the future the loop's other waiters share.
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except asyncio.TimeoutError:
            pass
        finally:
            with self._lock:
                waker.waiting -= 1

    @property
    def viewers(self) -> int:
        """How many video streams are open."""
        return self._viewers

    def viewer_joined(self) -> None:
        with self._lock:
            self._viewers += 1

    def viewer_left(self) -> None:
        with self._lock:
            self._viewers -= 1

    def health(self) -> dict[str, Any]:
        """What /healthz answers: frames classified, recent fps, uptime, whether the camera delivers."""
        with self._lock:
            now = self._clock()
            recent = [entry for entry in self._published if now - entry[0] <= FPS_WINDOW_S]
            last = self._published[-1][0] if self._published else None
            record: dict[str, Any] = {
                "frames": self._version,
                "fps": round(_rate(recent, now), 2),
                "uptime_s": round(now - self._started, 1),
                "camera_delivering": (self._finished is None and last is not None
                                      and now - last <= DELIVERING_WITHIN_S),
                "last_frame_age_s": None if last is None else round(now - last, 2),
                "video_viewers": self._viewers,
                "finished": self._finished,
            }
            if self._error is not None:
                record["error"] = self._error
            return record

    # Waking the event loops.

    def _due_wakers(self, everyone: bool = False) -> list[_LoopWaker]:
        """The wakers with someone waiting and no wake already on its way (call under the lock)."""
        due = [w for w in self._wakers.values() if (w.waiting or everyone) and not w.scheduled]
        for waker in due:
            waker.scheduled = True
        return due

    def _wake(self, wakers: list[_LoopWaker]) -> None:
        for waker in wakers:
            try:
                waker.loop.call_soon_threadsafe(waker.wake, self._lock)
            except RuntimeError:
                # The loop was closed (its server stopped): forget it.
                logger.debug("dropping the waker of a closed event loop")
                with self._lock:
                    self._wakers.pop(waker.loop, None)


def _rate(published: list[tuple[float, int]], now: float) -> float:
    """Frames per second over (publish time, version) pairs (oldest first) up to `now`: it falls
    while the camera stalls instead of keeping the rate of the last frames; 0 with fewer than two."""
    if len(published) < 2 or now <= published[0][0]:
        return 0.0
    return (published[-1][1] - published[0][1]) / (now - published[0][0])
