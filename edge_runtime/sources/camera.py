"""Frame sources for live classification, each behind a context manager.

`PiCamera2Source` reads the Raspberry Pi camera through picamera2; `OpenCVSource` reads a device
index, a video file or a stream URL through OpenCV's VideoCapture. Both hand out RGB uint8 frames
(picamera2's "RGB888" and OpenCV's frames are B, G, R in memory, so both are flipped), or None
when no frame came. `frames()` turns a source into a stream that reopens a live source that
drops out, a few times, before giving up with a CameraError that says what happened. A video
file plays as a camera would: at its own frame rate (never faster; every frame is still
classified when the machine is slower), and from the start again with `loop`.

picamera2 and cv2 are imported only when a source is opened; when the automatic choice finds
neither, the error names both installs (picamera2 comes from apt, not pip, and a virtual
environment sees it only when made with --system-site-packages). OpenCV's own `[ WARN ... ]` lines
(a camera index that does not exist, a backend that cannot open a device) go to the debug log,
not the terminal: our one-line CameraError says what happened.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import time
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import BackendError, EdgeError

logger = logging.getLogger(__name__)

AUTO_SOURCE = "auto"
PICAMERA2_SOURCE = "picamera2"
DEFAULT_DEVICE_INDEX = 0
# Ask the Pi camera's ISP for a small frame: scaling there is free, and the model wants 32x32.
PICAMERA2_FRAME_SIZE = (320, 240)
PICAMERA2_FORMAT = "RGB888"  # 24-bit, stored B, G, R in memory
DEFAULT_REOPENS = 3
DEFAULT_REOPEN_DELAY_S = 1.0
# A video declaring more frames a second than this (or none) plays as fast as it decodes.
MAX_PACED_FPS = 1000.0
# Behind its schedule by more than this (a slow model, a pause), a video's clock restarts from
# the current frame instead of rushing through the frames it is late for.
MAX_PACING_LAG_S = 1.0
URL_MARKER = "://"
OPENCV_HINT = "install OpenCV for USB cameras, video files and streams: pip install opencv-python-headless"
OPENCV_MISSING = f"OpenCV is not installed; {OPENCV_HINT}"
PICAMERA2_HINT = ("sudo apt install python3-picamera2, in a venv made with --system-site-packages "
                  "(see deploy/README.md)")
NO_CAMERA_PACKAGE = ("neither picamera2 nor OpenCV can be imported: for the Pi camera, sudo apt install "
                     "python3-picamera2 and make the venv with --system-site-packages; for USB cameras, video files "
                     "and streams, install the [camera] extra (opencv-python-headless); see deploy/README.md")


class CameraError(EdgeError):
    """A frame source cannot be opened, or stopped delivering frames and could not be reopened."""


class FrameSource:
    """A camera or video: `open`, `read` RGB frames (None when none came), `close`.

    `live` sources (cameras, streams) are reopened when they drop out; for a video file a
    missing frame is the end of the video.
    """

    description = "frame source"
    live = True

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> np.ndarray | None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "FrameSource":
        self.open()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def bgr_to_rgb(frame: np.ndarray) -> np.ndarray:
    """Reorder a B, G, R (or B, G, R, X) frame to R, G, B; grayscale frames pass unchanged.

    Returns a view (no copy): the preprocessing copies once when it resizes.
    """
    if frame.ndim == 3 and frame.shape[2] >= 3:
        return frame[:, :, 2::-1]
    return frame


class PiCamera2Source(FrameSource):
    """The Raspberry Pi camera through picamera2, configured for small RGB888 preview frames."""

    description = "Raspberry Pi camera (picamera2)"
    live = True

    def __init__(self, size: tuple[int, int] = PICAMERA2_FRAME_SIZE):
        self.size = size
        self._camera = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError as error:
            raise BackendError(f"picamera2 cannot be imported: {PICAMERA2_HINT}") from error
        except Exception as error:  # found but broken, e.g. ValueError from a numpy it was not built for
            raise BackendError(f"picamera2 is installed but fails to import ({type(error).__name__}: {error}); "
                               "see deploy/README.md, 'Which numpy'") from error
        try:
            camera = Picamera2()
            config = camera.create_preview_configuration(main={"size": self.size, "format": PICAMERA2_FORMAT})
            camera.configure(config)
            camera.start()
        except Exception as error:  # picamera2 reports a missing camera as IndexError, busy as RuntimeError
            raise CameraError(f"{self.description}: cannot start the camera ({type(error).__name__}: {error})") from error
        self._camera = camera

    def read(self) -> np.ndarray | None:
        if self._camera is None:
            return None
        try:
            frame = self._camera.capture_array("main")
        except Exception as error:  # a camera that stops mid-stream raises from libcamera
            logger.debug("picamera2 capture failed: %s", error)
            return None
        return None if frame is None else bgr_to_rgb(np.asarray(frame))

    def close(self) -> None:
        camera, self._camera = self._camera, None
        if camera is None:
            return
        try:
            camera.stop()
        finally:
            camera.close()


class OpenCVSource(FrameSource):
    """A camera index, video file or stream URL through OpenCV's VideoCapture.

    `missing_message` is the error when cv2 cannot be imported (the automatic choice, which has
    already found no picamera2, names both).
    """

    def __init__(self, source: int | str, missing_message: str = OPENCV_MISSING, loop: bool = False,
                 paced: bool = True, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self.source = source
        self.missing_message = missing_message
        self.live = not (isinstance(source, str) and os.path.isfile(source))
        # Only a video file is paced and looped: a camera or stream keeps its own time.
        self.loop = loop and not self.live
        self.paced = paced and not self.live
        self._clock = clock
        self._sleep = sleep
        self._frame_interval = 0.0
        self._schedule_start = 0.0
        self._frames_played = 0
        if isinstance(source, int):
            self.description = f"camera {source} (OpenCV)"
        elif self.live:
            self.description = f"stream {source}"
        else:
            self.description = f"video {source}"
        self._capture = None

    def open(self) -> None:
        try:
            import cv2
        except ImportError as error:
            raise BackendError(self.missing_message) from error
        with _opencv_quiet(cv2):
            capture = cv2.VideoCapture(self.source)
            opened = capture.isOpened()
            if not opened:
                capture.release()
        if not opened:
            raise CameraError(f"{self.description}: cannot open it")
        self._capture = capture
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0) if self.paced else 0.0
        self._frame_interval = 1.0 / fps if 0.0 < fps <= MAX_PACED_FPS else 0.0
        self._frames_played = 0

    def read(self) -> np.ndarray | None:
        if self._capture is None:
            return None
        ok, frame = self._capture.read()
        if (not ok or frame is None) and self.loop and self._rewind():
            ok, frame = self._capture.read()
        if not ok or frame is None:
            return None
        if self._frame_interval:
            self._wait_for_frame_time()
        return bgr_to_rgb(frame)

    def _rewind(self) -> bool:
        """Back to the first frame of the video (reopened where seeking fails); False when it cannot."""
        import cv2

        if self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0):
            return True
        self._capture.release()
        with _opencv_quiet(cv2):
            self._capture = cv2.VideoCapture(self.source)
        return self._capture.isOpened()

    def _wait_for_frame_time(self) -> None:
        """Hold the frame until its time in the video, counted from the first frame played."""
        now = self._clock()
        if self._frames_played == 0:
            self._schedule_start = now
        due = self._schedule_start + self._frames_played * self._frame_interval
        if now - due > MAX_PACING_LAG_S:
            self._schedule_start, self._frames_played, due = now, 0, now
        elif due > now:
            self._sleep(due - now)
        self._frames_played += 1

    def close(self) -> None:
        capture, self._capture = self._capture, None
        if capture is not None:
            capture.release()


@contextlib.contextmanager
def _opencv_quiet(cv2: Any) -> Iterator[None]:
    """Keep OpenCV's messages off the terminal while a source is opened.

    OpenCV's logger is set to silent for the block (and restored after), unless --verbose asked
    for diagnostics; what its backends print to stderr themselves (FFmpeg, GStreamer) is sent to
    the debug log either way.
    """
    from ..interpreter import native_stderr_to_log

    logging_api = getattr(getattr(cv2, "utils", None), "logging", None)
    silence = logging_api is not None and not logger.isEnabledFor(logging.DEBUG)
    if silence:
        previous = logging_api.getLogLevel()
        logging_api.setLogLevel(logging_api.LOG_LEVEL_SILENT)
    try:
        with native_stderr_to_log(logger, "opencv"):
            yield
    finally:
        if silence:
            logging_api.setLogLevel(previous)


def picamera2_available() -> bool:
    """True when picamera2 can be imported (checked without importing it)."""
    try:
        return importlib.util.find_spec(PICAMERA2_SOURCE) is not None
    except (ImportError, ValueError):
        return False


def open_source(source: str | None = None, loop: bool = False) -> FrameSource:
    """The frame source that `--camera [SOURCE]` names (not yet opened).

    None or "auto": the Pi camera when picamera2 is importable, else OpenCV camera 0 (whose
    error without OpenCV names both packages).
    "picamera2": the Pi camera. Digits: an OpenCV camera index. Anything else: a video file
    or a stream URL for OpenCV. `loop` plays a video file again from the start when it ends.
    """
    if source is None or source == AUTO_SOURCE:
        if picamera2_available():
            return PiCamera2Source()
        return OpenCVSource(DEFAULT_DEVICE_INDEX, missing_message=NO_CAMERA_PACKAGE)
    if source == PICAMERA2_SOURCE:
        return PiCamera2Source()
    if source.isdigit():
        return OpenCVSource(int(source))
    if URL_MARKER not in source and not os.path.exists(source):
        raise CameraError(f"{source}: no such video file, and not a camera index or stream URL")
    if os.path.isdir(source):
        raise CameraError(f"{source}: is a folder, not a video file or camera")
    return OpenCVSource(source, loop=loop)


def frames(source: FrameSource, max_reopens: int | None = None, reopen_delay_s: float | None = None,
           sleep: Callable[[float], None] = time.sleep,
           notify: Callable[[str], None] | None = None) -> Iterator[np.ndarray]:
    """Yield frames from an opened `source` until a video ends or the source is lost for good.

    A live source that delivers no frame is closed and reopened, up to `max_reopens` times in a
    row (a frame in between resets the count), `reopen_delay_s` apart; then CameraError.
    `notify` hears each attempt. Defaults: DEFAULT_REOPENS and DEFAULT_REOPEN_DELAY_S.
    """
    max_reopens = DEFAULT_REOPENS if max_reopens is None else max_reopens
    reopen_delay_s = DEFAULT_REOPEN_DELAY_S if reopen_delay_s is None else reopen_delay_s
    attempts = 0
    while True:
        frame = source.read()
        if frame is not None:
            attempts = 0
            yield frame
            continue
        if not source.live:
            return
        if attempts >= max_reopens:
            raise CameraError(f"{source.description}: stopped delivering frames and did not come back "
                              f"after {max_reopens} reopen attempts; check the connection or the stream")
        attempts += 1
        if notify is not None:
            notify(f"{source.description}: no frame, reopening ({attempts}/{max_reopens})")
        source.close()
        sleep(reopen_delay_s)
        try:
            source.open()
        except CameraError as error:
            logger.debug("reopen %d failed: %s", attempts, error)
