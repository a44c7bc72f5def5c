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


API_REQUEST = f"GET /api/latest HTTP/1.1\r\nHost: {LOOPBACK}\r\n\r\n".encode("ascii")
HEADER_END = b"\r\n\r\n"
MAX_RESPONSE_BYTES = 1 << 16


class ApiPoller(threading.Thread):
    """GET /api/latest `rate` times a second on one keep-alive connection (as a page's script
    would), recording each answer's latency; a failure is counted and the connection reopened.
    Raw socket, the request prepared once, only the status line and Content-Length read: a client
    on another machine costs this one nothing, so this one should cost as little as it can."""

    def __init__(self, port: int, rate: float, limit_s: float) -> None:
        super().__init__(name="api-poller", daemon=True)
        self.port, self.interval, self.limit_s = port, 1.0 / rate, limit_s
        self.latencies_ms: list[float] = []
        self.errors: list[str] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        import socket

        sock = None
        started = time.monotonic()
        for number in range(int(self.limit_s / self.interval)):
            if self.stopping.wait(max(0.0, started + number * self.interval - time.monotonic())):
                break
            begun = time.perf_counter()
            try:
                sock = sock or socket.create_connection((LOOPBACK, self.port), timeout=HTTP_TIMEOUT_S)
                sock.sendall(API_REQUEST)
                status, body = _read_response(sock)
                if status != 200 or b'"label"' not in body:
                    self.errors.append(f"{status} {body[:80]!r}")
                else:
                    self.latencies_ms.append((time.perf_counter() - begun) * 1000.0)
            except (OSError, ValueError) as error:
                self.errors.append(f"{type(error).__name__}: {error}")
                if sock is not None:
                    sock.close()
                sock = None
        if sock is not None:
            sock.close()

    def stop(self) -> None:
        self.stopping.set()
        self.join(HTTP_TIMEOUT_S)


def _read_response(sock) -> tuple[int, bytes]:
    """(status, body) of one HTTP/1.1 response with a Content-Length (what /api/latest sends)."""
    data = b""
    while HEADER_END not in data:
        chunk = sock.recv(MAX_RESPONSE_BYTES)
        if not chunk:
            raise ValueError("connection closed before the headers ended")
        data += chunk
        if len(data) > MAX_RESPONSE_BYTES:
            raise ValueError("headers over 64 KiB")
    head, _, body = data.partition(HEADER_END)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    lengths = [line.split(":", 1)[1] for line in lines[1:] if line.lower().startswith("content-length:")]
    if not lengths:
        raise ValueError("no Content-Length")
    length = int(lengths[0])
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            raise ValueError("connection closed inside the body")
        body += chunk
    return status, body


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
