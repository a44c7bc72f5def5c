"""The live view's web application: the page, the video, the result events and the JSON API.

`build_app` makes a Starlette app over a `LiveHub` from a fixed table of routes; every other path
is 404 and no route takes a file name from the request (the page's three files are read once, with
importlib.resources, from `static/`). `TokenGate` wraps it all. The two callables come from the
caller: `classify_upload(image_bytes) -> dict` classifies an uploaded image as a file would be, and
`capture(label) -> dict` saves the current frame under a class name (None: started without
`--save`). Both run in a worker thread, so the event loop keeps serving, one call at a time each
(classify_upload may still run beside the camera's own classification); they raise EdgeError for
what the user sent (400) and `capture` OSError for a disk failure (507 when the disk is full).

Starlette is imported inside `build_app`: without the [serve] extra it raises the one-line
MissingPackageError of `server.require_serve_extra`.
"""

from __future__ import annotations

import asyncio
import errno
import html
import json
import logging
import urllib.parse
from importlib import resources
from typing import Any, Awaitable, Callable

from ..errors import EdgeError
from .hub import LiveHub
from .jpeg import JpegEncoder, LatestJpeg
from .security import TOKEN_PARAMETER, TokenGate
from .server import require_serve_extra
from .streams import (MJPEG_CONTENT_TYPE, SEND_TIMEOUT_S, SSE_CONTENT_TYPE, BoundedStream, json_text, mjpeg_parts,
                      result_events, result_record)

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
MAX_UPLOAD_BYTES = 10 * MIB
# {"label": "..."}: a class name, never more than this.
MAX_CAPTURE_BODY_BYTES = 4096
# One upload is read and classified at a time (it holds up to MAX_UPLOAD_BYTES, and classify_upload
# is never called twice at once); one that trickles in is given up after this long, so it cannot
# hold its turn.
UPLOAD_READ_TIMEOUT_S = 30.0
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
STATIC_PACKAGE = "edge_runtime.serve"
# The page and its files: URL path -> (file in static/, media type). Nothing else is served.
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
# What the page links to: given the token's query parameter when there is a token.
PAGE_ASSET_LINKS = ('"/static/app.js"', '"/static/style.css"')


class Refusal(Exception):
    """A request answered with an error status and a one-line JSON message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    from starlette.responses import Response

    return Response(json_text(content), status_code=status, media_type="application/json", headers=headers)


def static_files(token: str | None) -> dict[str, tuple[bytes, str]]:
    """The page's files by URL path; with a token, the page's links to its files carry it."""
    folder = resources.files(STATIC_PACKAGE) / "static"
    files = {path: ((folder / name).read_bytes(), media_type) for path, (name, media_type) in STATIC_FILES.items()}
    if token is not None:
        page = files["/"][0].decode("utf-8")
        query = html.escape(urllib.parse.urlencode({TOKEN_PARAMETER: token}))
        for link in PAGE_ASSET_LINKS:
            page = page.replace(link, f'{link[:-1]}?{query}"')
        files["/"] = (page.encode("utf-8"), files["/"][1])
    return files


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `limit` bytes: from
    Content-Length before reading, else while it streams in (chunked uploads)."""
    from starlette.requests import ClientDisconnect

    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise Refusal(413, f"the request body is {int(declared)} bytes; the limit is {limit}")
    body = bytearray()
    try:
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise Refusal(413, f"the request body is over the limit of {limit} bytes")
    except ClientDisconnect as error:
        raise Refusal(400, "the client left before sending the whole body") from error
    return bytes(body)


def uploaded_file(body: bytes, content_type: str) -> bytes:
    """The image of an upload: the raw body, or the first file of a multipart/form-data form."""
    if not content_type.lower().startswith("multipart/form-data"):
        return body
    from email import policy
    from email.errors import MessageError
    from email.parser import BytesParser

    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1", "replace")
    try:
        message = BytesParser(policy=policy.HTTP).parsebytes(header + body)
        parts = list(message.iter_parts()) if message.is_multipart() else []
        files = [part for part in parts if part.get_filename()] or parts
        payload = files[0].get_payload(decode=True) if files else None
    except (ValueError, TypeError, LookupError, MessageError) as error:
        raise Refusal(400, f"the multipart/form-data upload cannot be read: {error}") from error
    if not isinstance(payload, bytes):
        raise Refusal(400, "the multipart/form-data upload holds no file")
    return payload


class LiveView:
    """The route handlers over one hub (see `build_app`)."""

    def __init__(self, hub: LiveHub, jpeg: LatestJpeg, serve_fps: float, send_timeout_s: float,
                 classify_upload: Callable[[bytes], dict[str, Any]],
                 capture: Callable[[str], dict[str, Any]] | None, max_upload_bytes: int,
                 capture_classes: Callable[[], list[str]] | None = None) -> None:
        self.hub = hub
        self.jpeg = jpeg
        self.serve_fps = serve_fps
        self.send_timeout_s = send_timeout_s
        self.classify_upload = classify_upload
        self.capture = capture
        self.capture_classes = capture_classes
        self.max_upload_bytes = max_upload_bytes
        self._uploads: asyncio.Lock | None = None
        self._captures: asyncio.Lock | None = None

    async def video(self, request: Any) -> BoundedStream:
        return BoundedStream(mjpeg_parts(self.hub, self.jpeg), MJPEG_CONTENT_TYPE, "video",
                             self.send_timeout_s)

    async def events(self, request: Any) -> BoundedStream:
        return BoundedStream(result_events(self.hub, self.serve_fps), SSE_CONTENT_TYPE, "event",
                             self.send_timeout_s)

    async def latest(self, request: Any) -> Any:
        snapshot = self.hub.snapshot()
        record = result_record(snapshot)
        if record is None:
            message = "no frame classified yet"
            if snapshot.finished is not None:
                message = f"no frame was classified: {snapshot.finished}"
            return json_response({"error": message}, 503)
        return json_response(record)

    async def model(self, request: Any) -> Any:
        facts = {**self.hub.model_facts, "labels": self.hub.labels, "capture": self.capture is not None}
        if self.capture_classes is not None:  # the class folders already saved to, read now
            facts["capture_classes"] = await asyncio.to_thread(self.capture_classes)
        return json_response(facts)

    async def health(self, request: Any) -> Any:
        return json_response(self.hub.health())

    async def classify(self, request: Any) -> Any:
        if self._uploads is None:
            self._uploads = asyncio.Lock()  # made on the loop that uses it
        async with self._uploads:
            try:
                body = await asyncio.wait_for(read_body(request, self.max_upload_bytes), UPLOAD_READ_TIMEOUT_S)
                image = await asyncio.to_thread(uploaded_file, body, request.headers.get("content-type", ""))
                if not image:
                    raise Refusal(400, "send the image file's bytes as the request body")
            except asyncio.TimeoutError:
                return json_response({"error": f"the upload took over {UPLOAD_READ_TIMEOUT_S:.0f} s"}, 408)
            except Refusal as refusal:
                return json_response({"error": str(refusal)}, refusal.status)
            return await self._call("classifying the upload", self.classify_upload, image)

    async def save_frame(self, request: Any) -> Any:
        if self.capture is None:
            return json_response({"error": "capture is off: start edge-classify with --save DIR to save frames"}, 409)
        try:
            body = await read_body(request, MAX_CAPTURE_BODY_BYTES)
            label = json.loads(body)["label"] if body else None
            if not isinstance(label, str) or not label.strip():
                raise Refusal(400, 'send JSON with the class name, e.g. {"label": "cat"}')
        except Refusal as refusal:
            return json_response({"error": str(refusal)}, refusal.status)
        except (ValueError, TypeError, KeyError):
            return json_response({"error": 'send JSON with the class name, e.g. {"label": "cat"}'}, 400)
        if self._captures is None:
            self._captures = asyncio.Lock()
        async with self._captures:  # capture is never called twice at once
            return await self._call("saving the frame", self.capture, label.strip())

    async def _call(self, doing: str, function: Callable[[Any], dict[str, Any]], argument: Any) -> Any:
        """`function(argument)` in a worker thread, its dict as JSON; its errors as one line."""
        try:
            return json_response(await asyncio.to_thread(function, argument))
        except EdgeError as error:  # what was sent (400), or a disk error kept with its errno
            code = getattr(error, "errno", None)
            status = 400 if code is None else 507 if code in DISK_FULL_ERRNOS else 500
            return json_response({"error": str(error)}, status)
        except OSError as error:
            if error.errno in DISK_FULL_ERRNOS:
                return json_response({"error": f"{doing} failed: the disk is full"}, 507)
            logger.warning("%s failed: %s", doing, error)
            return json_response({"error": f"{doing} failed: {error.strerror or error}"}, 500)
        except Exception:  # a bug in the callable: reported to the client, logged with its traceback
            logger.exception("%s failed", doing)
            return json_response({"error": f"{doing} failed unexpectedly; the server log says why"}, 500)


def build_app(hub: LiveHub, *, token: str | None, serve_fps: float,
              classify_upload: Callable[[bytes], dict[str, Any]],
              capture: Callable[[str], dict[str, Any]] | None,
              max_upload_bytes: int = MAX_UPLOAD_BYTES, encoder: JpegEncoder | None = None,
              send_timeout_s: float = SEND_TIMEOUT_S,
              capture_classes: Callable[[], list[str]] | None = None) -> Any:
    """The live view as a Starlette app: a fixed route table behind `TokenGate`.

    `serve_fps` caps both the video and the result events per client; `encoder` replaces the
    software JPEG encoder; a client whose socket takes nothing for `send_timeout_s` is dropped;
    `capture_classes` lists the classes saved to so far (offered by the page beside the model's).
    """
    require_serve_extra()
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.routing import Route

    if serve_fps <= 0:
        raise ValueError(f"serve_fps must be positive, not {serve_fps}")
    view = LiveView(hub, LatestJpeg(hub, serve_fps, encoder), serve_fps, send_timeout_s, classify_upload, capture,
                    max_upload_bytes, capture_classes)
    routes = [Route(path, _static_endpoint(body, media_type), methods=["GET"])
              for path, (body, media_type) in static_files(token).items()]
    routes += [
        Route("/video.mjpg", view.video, methods=["GET"]),
        Route("/api/events", view.events, methods=["GET"]),
        Route("/api/latest", view.latest, methods=["GET"]),
        Route("/api/model", view.model, methods=["GET"]),
        Route("/healthz", view.health, methods=["GET"]),
        Route("/api/classify", view.classify, methods=["POST"]),
        Route("/api/capture", view.save_frame, methods=["POST"]),
    ]
    app = Starlette(routes=routes, middleware=[Middleware(TokenGate, token=token)],
                    exception_handlers={404: _not_found, 405: _not_allowed})
    app.state.hub = hub
    app.state.view = view
    return app


def _static_endpoint(body: bytes, media_type: str) -> Callable[[Any], Awaitable[Any]]:
    async def endpoint(request: Any) -> Any:
        from starlette.responses import Response

        return Response(body, media_type=media_type)

    return endpoint


async def _not_found(request: Any, exc: Exception) -> Any:
    return json_response({"error": "not found"}, 404)


async def _not_allowed(request: Any, exc: Exception) -> Any:
    return json_response({"error": f"{request.method} is not allowed here"}, 405, getattr(exc, "headers", None))
