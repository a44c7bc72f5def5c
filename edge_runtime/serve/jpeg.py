"""The video's JPEG frames: encoded only while someone watches, once per frame for all viewers.

`LatestJpeg` is asked by each video viewer for the latest frame; it encodes a frame version the
first time one is asked for and hands the same bytes to every other viewer, so the cost does not
grow with the number of viewers (at most `max_fps` encodes a second), and nothing is encoded when
nobody watches. Encoding runs in a
worker thread, never on the event loop. The encoder is a small interface (`JpegEncoder`): Pillow
in software here; a hardware encoder (the Pi's, through picamera2) would be another class with
the same `encode`.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
from typing import Protocol

import numpy as np

from .hub import LiveHub

logger = logging.getLogger(__name__)

# Frames are downscaled so their longer side is at most this (a phone's view, and a Pi's upload).
MAX_SIDE_PX = 640
JPEG_QUALITY = 80


class JpegEncoder(Protocol):
    def encode(self, frame: np.ndarray) -> bytes:
        """JPEG bytes of an RGB (H, W, 3) or grey (H, W) uint8 frame."""


class PillowJpegEncoder:
    """Software JPEG with Pillow, the frame first reduced by a whole factor (a cheap box filter)
    until its longer side is at most `max_side`."""

    def __init__(self, max_side: int = MAX_SIDE_PX, quality: int = JPEG_QUALITY) -> None:
        self.max_side = max_side
        self.quality = quality

    def encode(self, frame: np.ndarray) -> bytes:
        from PIL import Image

        image = Image.fromarray(np.ascontiguousarray(frame))
        if image.mode not in ("RGB", "L"):
            image = image.convert("RGB")
        factor = math.ceil(max(image.size) / self.max_side)
        if factor > 1:
            image = image.reduce(factor)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=self.quality)
        return buffer.getvalue()


class LatestJpeg:
    """The JPEG of the hub's latest frame, shared by all the video viewers of one event loop.

    A new frame is encoded at most `max_fps` times a second, whatever the number of viewers: a
    viewer asking within that interval gets the frame already encoded (if it has not sent it yet),
    or waits for the next encode. Viewers therefore share one cadence and the same frames.
    """

    def __init__(self, hub: LiveHub, max_fps: float, encoder: JpegEncoder | None = None) -> None:
        self.hub = hub
        self.interval_s = 1.0 / max_fps
        self.encoder: JpegEncoder = encoder if encoder is not None else PillowJpegEncoder()
        self.encoded = 0  # frames encoded so far: tests and diagnostics
        self._version = 0  # the hub's version when the JPEG was made: what viewers are told they have
        self._frame_version = 0  # the frame it was made of (frames change less often in the server's process)
        self._jpeg = b""
        self._encoded_at = -math.inf
        self._failed = False
        self._lock: asyncio.Lock | None = None

    async def newer_than(self, sent: int) -> tuple[int, bytes] | None:
        """(version, JPEG) of a frame newer than version `sent` (the latest one, or the one just
        encoded for another viewer), or None when there is no picture newer than `sent`."""
        if self._lock is None:
            self._lock = asyncio.Lock()  # made on the loop that uses it
        loop = asyncio.get_running_loop()
        async with self._lock:
            fresh = loop.time() - self._encoded_at < self.interval_s
            if self._jpeg and self._version > sent and (fresh or self.hub.version == self._version):
                return self._version, self._jpeg
            delay = self._encoded_at + self.interval_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            snapshot = self.hub.snapshot()
            if snapshot.frame is not None and snapshot.frame_version != self._frame_version:
                self._encoded_at = loop.time()
                await self._encode(snapshot.frame)
                self._version = snapshot.version
                self._frame_version = snapshot.frame_version
            return (self._version, self._jpeg) if self._jpeg and self._version > sent else None

    async def _encode(self, frame: np.ndarray) -> None:
        try:
            self._jpeg = await asyncio.to_thread(self.encoder.encode, frame)
        except (TypeError, ValueError, OSError) as error:
            # A frame Pillow cannot take (an odd shape or dtype): viewers keep the last good
            # picture; said once, not for every frame.
            log = logger.debug if self._failed else logger.warning
            log("the live view cannot encode a frame of shape %s, dtype %s: %s",
                getattr(frame, "shape", None), getattr(frame, "dtype", None), error)
            self._failed = True
        else:
            self.encoded += 1
