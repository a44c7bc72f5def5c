"""The live view's two long-lived responses: MJPEG video and Server-Sent Events of the results.

Neither keeps a queue per client. Each stream holds the version of the last frame it sent and,
when it may send again (at most `--serve-fps` a second), takes whatever is latest: a slow client skips
frames and results, and its memory use stays bounded. A client whose socket stops draining makes
uvicorn's `send` wait (the transport is paused above its high-water mark, and `send` awaits the
drain); `BoundedStream` gives each send `send_timeout_s` and then drops that client, so its stream
ends without affecting the others. A stream also ends when the client leaves (`http.disconnect`)
and, cleanly with a last part or an `end` event, when the hub is finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
from typing import Any, AsyncIterator, Awaitable, Callable

from .hub import LiveHub, Snapshot
from .jpeg import LatestJpeg

logger = logging.getLogger(__name__)

MJPEG_BOUNDARY = "frame"
MJPEG_CONTENT_TYPE = f"multipart/x-mixed-replace; boundary={MJPEG_BOUNDARY}"
SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"
# A comment line on an idle event stream, so proxies and browsers keep it open.
SSE_KEEPALIVE_S = 15.0
# How long a browser's EventSource waits before reconnecting after a dropped connection.
SSE_RETRY_MS = 3000
# A client whose socket accepts nothing for this long is dropped.
SEND_TIMEOUT_S = 10.0
# The longest a video stream sleeps between looks at the hub when no frame comes.
VIDEO_IDLE_WAIT_S = 5.0

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]


def json_text(value: Any) -> str:
    """Compact JSON that browsers accept: a NaN or infinite number becomes null."""
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(_finite(value), separators=(",", ":"), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def result_record(snapshot: Snapshot) -> dict[str, Any] | None:
    """The latest result as /api/latest and the events give it, None before the first frame."""
    if snapshot.status is None:
        return None
    record = snapshot.status.to_dict()
    record["frames"] = snapshot.version
    if snapshot.finished is not None:
        record["finished"] = snapshot.finished
    return record


class BoundedStream:
    """An ASGI response sending the chunks of `chunks` as they come.

    It stops when the client disconnects, and drops a client none of whose sends completes within
    `send_timeout_s` (logged; uvicorn then closes the connection once it can).
    """

    def __init__(self, chunks: AsyncIterator[bytes], content_type: str, what: str,
                 send_timeout_s: float = SEND_TIMEOUT_S) -> None:
        self.chunks = chunks
        self.headers = [(b"content-type", content_type.encode("latin-1"))]
        self.what = what
        self.send_timeout_s = send_timeout_s

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.headers})
        if scope.get("method") == "HEAD":  # the headers only: nothing to stream, nothing to encode
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            await self.chunks.aclose()
            return
        gone = asyncio.ensure_future(_disconnected(receive))
        step: asyncio.Future[bytes] | None = None
        try:
            while True:
                step = asyncio.ensure_future(self.chunks.__anext__())
                await asyncio.wait({step, gone}, return_when=asyncio.FIRST_COMPLETED)
                if not step.done():
                    return  # the client left
                try:
                    chunk = step.result()
                except StopAsyncIteration:
                    break
                if not await self._send(send, scope, chunk, more_body=True):
                    return
            await self._send(send, scope, b"", more_body=False)
        finally:
            gone.cancel()
            if step is not None and not step.done():
                step.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await step
            await self.chunks.aclose()

    async def _send(self, send: Send, scope: dict[str, Any], body: bytes, more_body: bool) -> bool:
        try:
            await asyncio.wait_for(send({"type": "http.response.body", "body": body, "more_body": more_body}),
                                   self.send_timeout_s)
        except asyncio.TimeoutError:
            client = scope.get("client") or ("?", 0)
            logger.warning("dropped a %s client at %s:%s: it read nothing for %.0f s",
                           self.what, client[0], client[1], self.send_timeout_s)
            return False
        return True


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone (the request's own body, if any, is read and ignored)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def mjpeg_parts(hub: LiveHub, jpeg: LatestJpeg) -> AsyncIterator[bytes]:
    """The parts of a `multipart/x-mixed-replace` stream: the latest frame when there is one newer
    than the last sent (at `jpeg`'s cadence), and a closing boundary once the hub is finished."""
    sent = 0
    hub.viewer_joined()
    try:
        while True:
            await hub.wait_newer(sent, VIDEO_IDLE_WAIT_S)
            finished = hub.finished is not None
            if hub.version > sent:
                latest = await jpeg.newer_than(sent)
                if latest is None:
                    sent = hub.version  # no picture for what there is: wait for a newer frame
                else:
                    sent, data = latest
                    yield (f"--{MJPEG_BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(data)}\r\n\r\n"
                           .encode("ascii") + data + b"\r\n")
            if finished:
                break  # after the last frame; anything published after the finish is not shown
        yield f"--{MJPEG_BOUNDARY}--\r\n".encode("ascii")
    finally:
        hub.viewer_left()


async def result_events(hub: LiveHub, max_per_s: float,
                        keepalive_s: float = SSE_KEEPALIVE_S) -> AsyncIterator[bytes]:
    """Server-Sent Events: `data: {result}` for the latest result (at most `max_per_s` a second,
    never one the client already has), a comment after `keepalive_s` of quiet, and `event: end`
    with the finish message once the hub is finished."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / max_per_s
    seen = 0
    next_at = 0.0
    yield f"retry: {SSE_RETRY_MS}\n\n".encode("ascii")
    while True:
        finished = hub.finished is not None
        if hub.version > seen:
            delay = next_at - loop.time()
            if delay > 0 and not finished:
                await asyncio.sleep(delay)
            snapshot = hub.snapshot()
            seen = snapshot.version
            record = result_record(snapshot)
            if record is not None:
                next_at = loop.time() + interval
                yield f"data: {json_text(record)}\n\n".encode("utf-8")
        if finished:
            snapshot = hub.snapshot()
            end = {"message": snapshot.finished, "error": snapshot.error}
            yield f"event: end\ndata: {json_text(end)}\n\n".encode("utf-8")
            return
        await hub.wait_newer(seen, keepalive_s)
        if hub.version <= seen and hub.finished is None:
            yield b": keep-alive\n\n"
