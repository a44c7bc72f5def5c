"""Serving the live view: the address to bind, the token it needs, and uvicorn in a thread.

uvicorn runs in a background daemon thread with its own event loop, so the main thread stays free:
in a run that is the server process's thread that feeds the hub (see `process`). `start_server` binds the socket itself, so an address in use is
a one-line `ServeError` before anything starts, and port 0 gives a free port (`RunningServer.port`).
Binding loopback is the default; `bind_policy` gives any other address a token and a warning.

Starlette and uvicorn are the optional [serve] extra, imported only inside the functions that need
them; without it they raise one line saying what to install.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import ipaddress
import logging
import secrets
import socket
import sys
import threading
import time
from typing import Any

from ..errors import EdgeError, MissingPackageError

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
SERVE_MODULES = ("starlette", "uvicorn")
MISSING_EXTRA_MESSAGE = "--serve needs the [serve] extra: pip install 'edge-image-toolkit[serve]'"
TOKEN_BYTES = 16
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
# How long start_server waits for uvicorn to start serving.
START_TIMEOUT_S = 10.0
START_POLL_S = 0.01
# Open streams get this long to end on their own when the server stops, then are cancelled.
GRACEFUL_SHUTDOWN_S = 2
# Connections (and their requests) served at once; more are answered 503 (a Pi's memory is small).
MAX_CONNECTIONS = 100
LISTEN_BACKLOG = 128
# What uvicorn logs when a response ends early; the live view does that on purpose when it drops a
# client that stopped reading (and logs that itself), so this line is left out of the log.
UNFINISHED_RESPONSE_MESSAGE = "ASGI callable returned without completing response."


class ServeError(EdgeError):
    """The live view cannot serve on the address asked for (in use, not this machine's, malformed)."""


def serve_extra_installed() -> bool:
    """Whether Starlette and uvicorn are there, found without importing them (the classifying
    process only checks; the server's own process imports them)."""
    import importlib.util

    for name in SERVE_MODULES:
        if name in sys.modules:
            if sys.modules[name] is None:  # blocked, as a test does to play a missing package
                return False
        elif importlib.util.find_spec(name) is None:
            return False
    return True


def require_serve_extra() -> None:
    """Raise MissingPackageError (one line naming the extra) when Starlette or uvicorn is missing."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise MissingPackageError(MISSING_EXTRA_MESSAGE) from error


def parse_address(text: str) -> tuple[str, int]:
    """`[HOST:]PORT` as (host, port): "8080", "0.0.0.0:8080", "[::1]:8080"; the host defaults to
    127.0.0.1. Port 0 means any free port."""
    host, separator, port_text = text.strip().rpartition(":")
    if not separator:
        host = ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ServeError(f"cannot read the address {text!r}: write an IPv6 host in brackets, e.g. [::1]:8080")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ServeError(f"cannot read the address {text!r}: expected [HOST:]PORT with a port from 0 to 65535, "
                         f"e.g. {DEFAULT_PORT} or 0.0.0.0:{DEFAULT_PORT}")
    return host or DEFAULT_HOST, int(port_text)


def is_loopback(host: str) -> bool:
    """Whether `host` is reachable from this machine only: localhost or a loopback address (a
    host name other than localhost counts as reachable from the network)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def url_host(host: str) -> str:
    """`host` as it goes in a URL (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


def local_url(host: str, port: int) -> str:
    """The page's address as this machine reaches a server bound to host:port (a wildcard bind
    answers on loopback too)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "") else "::1" if host == "::" else host
    return f"http://{url_host(host)}:{port}/"


def bind_policy(host: str, token: str | None, port: int | None = None) -> tuple[str | None, str | None]:
    """(token, warning): loopback keeps the token it has (None: no token needed); any other host
    needs one, generated when not given, and gets a warning saying how to open the page."""
    if is_loopback(host):
        return token, None
    shown_port = str(port) if port is not None else "PORT"
    where = "<this device's address>" if host in WILDCARD_HOSTS else url_host(host)
    if token is None:
        token = secrets.token_urlsafe(TOKEN_BYTES)
        query = token
    else:
        query = "<your --token>"
    warning = (f"the live view on {url_host(host or '0.0.0.0')}:{shown_port} is reachable from the network and "
               f"every request needs the token; open http://{where}:{shown_port}/?token={query}")
    return token, warning


@dataclasses.dataclass
class RunningServer:
    """A live view being served; `stop` ends it."""

    host: str
    port: int
    server: Any  # uvicorn.Server
    thread: threading.Thread
    app: Any

    @property
    def url(self) -> str:
        """Where this machine reaches it (a wildcard bind answers on loopback too)."""
        return local_url(self.host, self.port)

    def stop(self, timeout_s: float = 5.0) -> None:
        """End open streams (finishing the app's hub if the caller has not), stop uvicorn, and wait
        for its thread at most `timeout_s`."""
        hub = getattr(getattr(self.app, "state", None), "hub", None)
        if hub is not None and hub.finished is None:
            hub.finish("the live view stopped")
        self.shut_down(timeout_s)

    def shut_down(self, timeout_s: float) -> None:
        """Stop uvicorn (open streams are cancelled after GRACEFUL_SHUTDOWN_S) and join its thread."""
        self.server.should_exit = True
        self.thread.join(timeout_s)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout_s)
        if self.thread.is_alive():
            logger.warning("the live view's server did not stop within %.0f s", 2 * timeout_s)


class _DropUnfinishedResponse(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != UNFINISHED_RESPONSE_MESSAGE


_UVICORN_FILTER = _DropUnfinishedResponse()


def start_server(app: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT) -> RunningServer:
    """Serve `app` on host:port from a daemon thread; returns once the socket listens and uvicorn
    has started. Raises ServeError (one line) when the address is in use or cannot be bound."""
    require_serve_extra()
    import uvicorn

    sock = bind_socket(host, port)
    config = uvicorn.Config(app, log_config=None, log_level="warning", access_log=False, lifespan="off",
                            http="h11", timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
                            limit_concurrency=MAX_CONNECTIONS, backlog=LISTEN_BACKLOG, server_header=False)
    server = uvicorn.Server(config)
    logging.getLogger("uvicorn.error").addFilter(_UVICORN_FILTER)
    failure: list[BaseException] = []

    def serve() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(server.serve(sockets=[sock]))
        except BaseException as error:  # noqa: BLE001 - reported by start_server, not lost in a thread
            failure.append(error)
        finally:
            loop.close()
            sock.close()

    actual_port = sock.getsockname()[1]
    thread = threading.Thread(target=serve, name=f"live-view-{actual_port}", daemon=True)
    thread.start()
    running = RunningServer(host, actual_port, server, thread, app)
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(START_POLL_S)
    if not server.started:
        running.shut_down(START_TIMEOUT_S)
        reason = f"{failure[0]}" if failure else "it did not start in time"
        raise ServeError(f"cannot serve on {url_host(host)}:{actual_port}: {reason}")
    logger.info("live view at %s", running.url)
    return running


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port, or a one-line ServeError saying why not."""
    where = f"{url_host(host)}:{port}"
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise ServeError(f"cannot serve on {where}: the host is not known here ({error.strerror})") from error
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(LISTEN_BACKLOG)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            reason = "the address is in use (another --serve, or another server on that port?); choose another port"
        elif error.errno == errno.EADDRNOTAVAIL:
            reason = "that address is not one of this machine's"
        elif error.errno == errno.EACCES:
            reason = "permission denied (ports under 1024 need root; use e.g. 8080)"
        else:
            reason = error.strerror or str(error)
        raise ServeError(f"cannot serve on {where}: {reason}") from error
    sock.setblocking(False)
    return sock
