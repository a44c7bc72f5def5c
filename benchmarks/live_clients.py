"""The load benchmark's clients (bench_live_view.py): MJPEG viewers, an API poller and a viewer that
stops reading, all cheap on purpose (raw sockets, one thread for all viewers, 1 MiB reads, only part
boundaries counted) since they share the cores with the server they measure. Loopback only.
"""

from __future__ import annotations

import threading
import time

LOOPBACK = "127.0.0.1"
HTTP_TIMEOUT_S = 5.0
SAMPLE_EVERY_S = 0.25
RECV_BYTES = 1 << 20
# The stalled viewer's receive buffer: small, so its connection backs up soon.
STALLED_RCVBUF = 4096
DRAIN_LIMIT_S = 20.0
PART_BOUNDARY = b"--frame\r\n"
VIDEO_REQUEST = f"GET /video.mjpg HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode("ascii")


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
            sock.sendall(VIDEO_REQUEST)
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
    sock.sendall(VIDEO_REQUEST)
    return sock


def drained_to_close(sock, limit_s: float = DRAIN_LIMIT_S) -> bool:
    """Read what the server had sent until it closes the connection (True) or `limit_s` passes."""
    deadline = time.monotonic() + limit_s
    sock.settimeout(1.0)
    with sock:
        while time.monotonic() < deadline:
            try:
                if not sock.recv(RECV_BYTES):
                    return True
            except TimeoutError:
                continue
            except OSError:  # reset by the server: closed too
                return True
    return False
