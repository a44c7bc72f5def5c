"""The live view under load (issue 22): what viewers and API clients cost the classification loop.

Runs a real `edge-classify --camera VIDEO --loop --serve 127.0.0.1:0 --json -o LOG` process. VIDEO
is a 640x480 camera-like clip declaring a high frame rate (so the loop classifies as fast as the
machine allows, and its fps measures what the server takes from it), made of CIFAR-10 test JPEGs
upscaled when ../shared/datasets/cifar10-jpeg is there, else of synthetic pictures. Three phases of
`--seconds` each:

    a  no viewer
    b  one MJPEG viewer
    c  20 MJPEG viewers, 50 requests a second to /api/latest, and one viewer that connects and
       then stops reading

In each it measures the classification fps (from /healthz's frame count), the server's resident
memory (VmRSS at the start and end of the phase and its peak), the frames each viewer received
and the longest gap between them, and /api/latest's latency percentiles and errors. At the end it
stops the process with Ctrl-C (SIGINT) and compares the -o log's line count with the frames the
process says it classified. The clients are cheap on purpose (raw sockets, one thread for all
viewers, 1 MiB reads, only part boundaries counted) because they share the 2 cores with the
server; their own CPU time is printed beside the server's.

    .venv/bin/python benchmarks/bench_live_view.py [--model artifacts/model_int8.tflite] [--seconds 60]

Exit 0 when every must holds ((c)/(a) fps >= 0.90, RSS growth < 50 MiB, the stalled viewer
dropped while the others kept receiving, one log line per classified frame), 1 when one fails.
All traffic stays on 127.0.0.1, and every loop is bounded in time. `start_live_view` (the
process, started and stopped) is shared with the live view's browser test and screenshot script.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO_ROOT / "artifacts" / "model_int8.tflite"
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "datasets" / "cifar10-jpeg"
LOOPBACK = "127.0.0.1"
FRAME_SIZE = (640, 480)  # width, height: a camera's VGA
VIDEO_FPS = 1000.0
VIDEO_FRAMES = 120
DEFAULT_SECONDS = 60.0
VIEWERS = 20
API_RATE = 50.0
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
HTTP_TIMEOUT_S = 5.0
WARMUP_S = 5.0
SAMPLE_EVERY_S = 0.25
RECV_BYTES = 1 << 20
# The stalled viewer's receive buffer: small, so its connection backs up soon.
STALLED_RCVBUF = 4096
# How long after phase (c) the run still waits for the server to drop the stalled viewer.
STALL_DROP_LIMIT_S = 90.0
DRAIN_LIMIT_S = 20.0
PART_BOUNDARY = b"--frame\r\n"
# Musts and the goal, as issue 22 states them.
MIN_LOADED_FPS_RATIO = 0.90
GOAL_ONE_VIEWER_OVERHEAD = 0.15
MAX_RSS_GROWTH_MIB = 50.0
# A viewer that went this long without a frame was stalled, not merely slowed.
MAX_VIEWER_GAP_S = 2.0
URL_LINE = re.compile(r"^live view: (http://127\.0\.0\.1:(\d+)/\S*)$", re.MULTILINE)
SUMMARY_LINE = re.compile(r"^(\d+) frames in [\d.]+ s", re.MULTILINE)
PAGE_SIZE_KIB = 1024.0


# --- Clients --------------------------------------------------------------------------------------

def http_get(port: int, path: str, token: str | None = None) -> tuple[int, bytes]:
    import http.client

    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=HTTP_TIMEOUT_S)
    try:
        connection.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def stream_request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode("ascii")


class Viewers(threading.Thread):
    """`count` MJPEG viewers, all served by one thread over a selector: each reads whatever is there
    (up to 1 MiB) and counts part boundaries, with the time it saw them. Stops at `stop()` or at
    `limit_s`, whichever comes first."""

    def __init__(self, port: int, count: int, limit_s: float) -> None:
        super().__init__(name=f"viewers-{count}", daemon=True)
        import selectors
        import socket

        self.selector = selectors.DefaultSelector()
        self.arrivals: list[list[float]] = [[] for _ in range(count)]
        self.closed_at: list[float | None] = [None] * count
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + limit_s
        for index in range(count):
            sock = socket.create_connection((LOOPBACK, port), timeout=HTTP_TIMEOUT_S)
            sock.sendall(stream_request("/video.mjpg"))
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ, [index, b""])

    def run(self) -> None:
        while not self.stopping.is_set() and time.monotonic() < self.deadline and self.selector.get_map():
            for key, _ in self.selector.select(SAMPLE_EVERY_S):
                index, tail = key.data
                try:
                    data = key.fileobj.recv(RECV_BYTES)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                now = time.monotonic()
                if not data:
                    self.closed_at[index] = now
                    self.selector.unregister(key.fileobj)
                    key.fileobj.close()
                    continue
                seen = tail + data
                self.arrivals[index].extend([now] * seen.count(PART_BOUNDARY))
                key.data[1] = seen[-(len(PART_BOUNDARY) - 1):]
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(HTTP_TIMEOUT_S)


class ApiPoller(threading.Thread):
    """GET /api/latest `rate` times a second on one keep-alive connection (as a page's script
    would), recording each answer's latency; a failure is counted and the connection reopened."""

    def __init__(self, port: int, rate: float, limit_s: float) -> None:
        super().__init__(name="api-poller", daemon=True)
        self.port, self.interval, self.limit_s = port, 1.0 / rate, limit_s
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        import http.client

        connection = None
        started = time.monotonic()
        for number in range(int(self.limit_s / self.interval)):
            if self.stopping.wait(max(0.0, started + number * self.interval - time.monotonic())):
                break
            begun = time.perf_counter()
            try:
                connection = connection or http.client.HTTPConnection(LOOPBACK, self.port, timeout=HTTP_TIMEOUT_S)
                connection.request("GET", "/api/latest")
                response = connection.getresponse()
                body = response.read()
                if response.status != 200 or b'"label"' not in body:
                    self.errors.append(f"{response.status} {body[:80]!r}")
                else:
                    self.latencies_ms.append((time.perf_counter() - begun) * 1000.0)
            except (OSError, http.client.HTTPException) as error:
                self.errors.append(f"{type(error).__name__}: {error}")
                if connection is not None:
                    connection.close()
                connection = None
        if connection is not None:
            connection.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(HTTP_TIMEOUT_S)


def connect_stalled(port: int):
    """A viewer that asks for the video and then never reads a byte."""
    import socket

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, STALLED_RCVBUF)
    sock.settimeout(HTTP_TIMEOUT_S)
    sock.connect((LOOPBACK, port))
    sock.sendall(stream_request("/video.mjpg"))
    return sock


def drained_to_close(sock, limit_s: float = DRAIN_LIMIT_S) -> bool:
    """Read what the server had sent until it closes the connection (True) or `limit_s` passes."""
    deadline = time.monotonic() + limit_s
    sock.settimeout(1.0)
    try:
        while time.monotonic() < deadline:
            try:
                if not sock.recv(RECV_BYTES):
                    return True
            except TimeoutError:
                continue
            except OSError:  # reset by the server: closed too
                return True
        return False
    finally:
        sock.close()


from live_view_load import main  # noqa: E402  (the phases and the report, below the clients they use)

if __name__ == "__main__":
    main()
