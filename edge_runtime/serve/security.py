"""The live view's gate: the token on every route, and the headers every response carries.

A plain ASGI middleware (it wraps the whole Starlette app, so no route, the page, static files and
the video included, answers without the token). The token is accepted as `Authorization: Bearer`
(the page's fetch calls) or as a `token` query parameter (a browser's first load, and the <img>
and EventSource URLs, which cannot set headers), compared in constant time.
"""

from __future__ import annotations

import logging
import secrets
import urllib.parse
from typing import Any

from .streams import Receive, Send, json_text

logger = logging.getLogger(__name__)

TOKEN_PARAMETER = "token"
# A query string with more fields than this is not a browser's: refused rather than parsed.
MAX_QUERY_FIELDS = 32
UNAUTHORIZED_MESSAGE = ("this live view needs its token: open the address edge-classify printed "
                        "(.../?token=...) or send 'Authorization: Bearer <token>'")
# Sent with every response. no-referrer: the token may sit in the page's URL. DENY and
# frame-ancestors: no other site may frame the page (and its capture button). The page loads
# nothing but its own files.
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                    (b"content-security-policy", b"default-src 'self'; frame-ancestors 'none'; base-uri 'none'")]
DEFAULT_CACHE_CONTROL = b"no-store"


def token_matches(token: str, scope: dict[str, Any]) -> bool:
    """Whether the request carries `token` as a Bearer credential or a `token` query parameter."""
    expected = token.encode("utf-8")
    for name, value in scope.get("headers", []):
        if name.lower() == b"authorization":
            scheme, _, credential = value.partition(b" ")
            if scheme.lower() == b"bearer" and secrets.compare_digest(credential.strip(), expected):
                return True
    query = scope.get("query_string", b"").decode("latin-1")
    try:
        fields = urllib.parse.parse_qs(query, max_num_fields=MAX_QUERY_FIELDS)
    except ValueError:
        return False
    return any(secrets.compare_digest(candidate.encode("utf-8"), expected)
               for candidate in fields.get(TOKEN_PARAMETER, []))


class TokenGate:
    """ASGI middleware: 401 without the token (when there is one); security headers, and
    `Cache-Control: no-store` unless a response sets its own, on every response."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", DEFAULT_CACHE_CONTROL))
                message = {**message, "headers": headers + SECURITY_HEADERS}
            await send(message)

        if self.token is not None and not token_matches(self.token, scope):
            logger.info("refused %s %s from %s: no valid token", scope.get("method"), scope.get("path"),
                        (scope.get("client") or ("?",))[0])
            body = json_text({"error": UNAUTHORIZED_MESSAGE}).encode("utf-8")
            await send_with_headers({"type": "http.response.start", "status": 401,
                                     "headers": [(b"content-type", b"application/json"),
                                                 (b"content-length", str(len(body)).encode("ascii")),
                                                 (b"www-authenticate", b"Bearer")]})
            await send_with_headers({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send_with_headers)
