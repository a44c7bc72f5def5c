"""The live view's server, started for real on a free loopback port and fed synthetic frames.

`live_view(**options)` starts a LiveHub, a thread publishing noise frames (960x720, so the video
must downscale them) with LiveStatus results, and the app through `start_server`; everything is
stopped in the fixture's finalizer, even when the test fails. Clients are the standard library's
(http.client and raw sockets). Test modules import the helpers too, so this opts out of assertion
rewriting (it asserts nothing): PYTEST_DONT_REWRITE
"""

from __future__ import annotations

import dataclasses
import http.client
import io
import socket
import threading
import time
from typing import Any, Callable

import numpy as np
import pytest
from PIL import Image

from edge_runtime.classify import Class
from edge_runtime.errors import ImageError
from edge_runtime.serve.hub import LiveHub
from edge_runtime.sources.live import LiveStatus

LABELS = ["cat", "dog", "bird"]
MODEL_FACTS = {"model": "/models/pets_int8.tflite", "backend": "ai-edge-litert", "num_classes": 3}
TOKEN = "s3cret-Token_42"
FRAME_SHAPE = (720, 960, 3)
NOISE_FRAMES = 4
FEED_FPS = 40
# Bounds of the feeding thread, whatever the test does.
FEED_LIMIT_S = 60.0
FEED_LIMIT_FRAMES = int(FEED_LIMIT_S * FEED_FPS)
HTTP_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
BOUNDARY = b"--frame\r\n"


def status_for(frame: int) -> LiveStatus:
    classes = (Class(0, "cat", 0.9), Class(1, "dog", 0.07), Class(2, "bird", 0.03))
    return LiveStatus(frame, "cat", 0.9, float(FEED_FPS), False, classes, 4.5, time.time())


class Feeder(threading.Thread):
    """Publishes noise frames to the hub at about FEED_FPS, as the classification loop would."""

    def __init__(self, hub: LiveHub) -> None:
        super().__init__(name="test-feeder", daemon=True)
        self.hub = hub
        self.stopping = threading.Event()
        rng = np.random.default_rng(7)
        self.frames = [rng.integers(0, 256, FRAME_SHAPE, dtype=np.uint8) for _ in range(NOISE_FRAMES)]

    def run(self) -> None:
        deadline = time.monotonic() + FEED_LIMIT_S
        for number in range(1, FEED_LIMIT_FRAMES + 1):
            if self.stopping.is_set() or time.monotonic() > deadline:
                return
            self.hub.publish(self.frames[number % NOISE_FRAMES], status_for(number))
            self.stopping.wait(1.0 / FEED_FPS)

    def stop(self) -> None:
        self.stopping.set()
        self.join(STOP_TIMEOUT_S)


def classify_image_bytes(data: bytes) -> dict[str, Any]:
    """The test's classify_upload: decodes the image as the file path would, and answers."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            size = list(image.size)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"upload: not an image Pillow can read ({type(error).__name__})") from error
    return {"label": "cat", "score": 0.9, "size": size}


@dataclasses.dataclass
class Live:
    hub: LiveHub
    app: Any
    server: Any
    feeder: Feeder | None

    @property
    def port(self) -> int:
        return self.server.port

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT_S)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        finally:
            connection.close()

    def open_stream(self, path: str, headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT_S)
        connection.request("GET", path, headers=headers or {})
        return connection.getresponse()

    def health(self) -> dict[str, Any]:
        import json

        headers = {"Authorization": f"Bearer {TOKEN}"}
        return json.loads(self.request("GET", "/healthz", headers=headers)[2])

    def close(self) -> None:
        if self.feeder is not None:
            self.feeder.stop()
        self.server.stop(STOP_TIMEOUT_S)


def start_live(*, token: str | None = None, feed: bool = True, serve_fps: float = 10.0,
               capture: Callable[[str], dict[str, Any]] | None = None, **options: Any) -> Live:
    from edge_runtime.serve.app import build_app
    from edge_runtime.serve.server import start_server

    hub = LiveHub(MODEL_FACTS, LABELS)
    app = build_app(hub, token=token, serve_fps=serve_fps, classify_upload=classify_image_bytes, capture=capture,
                    **options)
    server = start_server(app, "127.0.0.1", 0)
    feeder = Feeder(hub) if feed else None
    if feeder is not None:
        feeder.start()
    return Live(hub, app, server, feeder)


@pytest.fixture
def live_view():
    """start(**options) -> Live; every server started is stopped at the end of the test."""
    started: list[Live] = []

    def start(**options: Any) -> Live:
        live = start_live(**options)
        started.append(live)
        return live

    yield start
    for live in started:
        live.close()


def read_parts(response: http.client.HTTPResponse, seconds: float, limit: int = 1000) -> list[bytes]:
    """The JPEG parts of an MJPEG response read for `seconds` (or until it ends or `limit` parts)."""
    parts: list[bytes] = []
    buffer = b""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and len(parts) < limit:
        chunk = response.read1(65536)
        if not chunk:
            break
        buffer += chunk
        while True:
            start = buffer.find(BOUNDARY)
            head_end = buffer.find(b"\r\n\r\n", start)
            if start < 0 or head_end < 0:
                break
            headers = buffer[start + len(BOUNDARY):head_end].decode("ascii").split("\r\n")
            length = int(next(h.split(":")[1] for h in headers if h.lower().startswith("content-length")))
            if len(buffer) < head_end + 4 + length:
                break
            parts.append(buffer[head_end + 4:head_end + 4 + length])
            buffer = buffer[head_end + 4 + length:]
    return parts


def raw_exchange(port: int, data: bytes, shut_write: bool = False, timeout_s: float = HTTP_TIMEOUT_S) -> bytes:
    """Send bytes as they are (no client fixing up the request) and read the answer until EOF."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        if shut_write:
            sock.shutdown(socket.SHUT_WR)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (socket.timeout, ConnectionResetError):
            pass
        return answer


def wait_until(condition: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step_s)
    return condition()
