"""The edge: the one pure-ASGI layer around the whole application, routed or not (Litestar's own middleware runs
only on matched routes, so it would miss 404 and 405).

For each HTTP request it
- adopts a valid `X-Request-ID` / `X-Correlation-ID` or makes one (`middleware.correlation`), and echoes it;
- adds the security headers a response lacks (`middleware.security_headers`);
- writes the request's access line once the response is over: method, path (never the query string, where
  EventSource prompts live), status and duration.

One layer for the three, not one each: every body chunk of every stream passes through each layer's `send`. The
access line is written at the end, not when the response starts as uvicorn's is, because for a stream the start
goes out with the first token, and a log record there is time to first token. It touches nothing but
`http.response.start`, so `receive` and disconnects pass through untouched.
"""

from __future__ import annotations

import logging
import os
import time

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.error_handlers import client_error, error_reply
from app.request_context import REQUEST_ID, set_request_id
from app.response_head import PROVISIONAL
from middleware.correlation import incoming_request_id
from middleware.security_headers import SecurityHeaders

access_logger = logging.getLogger("tokenrelay.access")


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, security_headers: SecurityHeaders) -> None:
        self._app = app
        self._security = security_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        started = time.monotonic()
        request_id = incoming_request_id(scope["headers"]) or os.urandom(16).hex()
        set_request_id(scope, request_id)
        send_at_edge = _EdgeSend(send, self._security, (b"x-request-id", request_id.encode()))
        token = REQUEST_ID.set(request_id)
        try:
            await self._app(scope, receive, send_at_edge)
        except Exception as exc:
            if send_at_edge.status:
                raise  # the response has started: only closing the connection is left (uvicorn does)
            # Nothing was answered yet: the client gets the one error JSON, not the server's plain-text 500.
            error = client_error(exc, scope["method"], scope["path"])  # logs what was unexpected
            await error_reply(error, request_id)(scope, receive, send_at_edge)
        finally:
            client = scope.get("client")
            access_logger.info(
                '%s - "%s %s HTTP/%s" %s %.1f ms',
                client[0] if client else "-", scope["method"], _logged_path(scope), scope.get("http_version", "1.1"),
                send_at_edge.status or "-", (time.monotonic() - started) * 1000,
            )  # fmt: skip
            REQUEST_ID.reset(token)


class _EdgeSend:
    """The `send` the app gets: the response's start gains the security headers and the request id, and its
    status is kept for the access line. An object, not a closure over four cells: it lives as long as the
    stream (300 bytes less of each open one)."""

    __slots__ = ("_own_id", "_provisional", "_security", "_send", "status")

    def __init__(self, send: Send, security: SecurityHeaders, own_id: tuple[bytes, bytes]) -> None:
        self._send = send
        self._security = security
        self._own_id = own_id
        self.status = 0
        self._provisional = 0  # a provisional start's status: the response's once a body follows it

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if message.get(PROVISIONAL):  # nothing is answered by it yet: it may still be replaced
                self._provisional = message["status"]
            else:
                self.status, self._provisional = message["status"], 0
            headers = self._security.added_to(message.get("headers", ()))
            headers.append(self._own_id)
            message["headers"] = headers
        elif self._provisional and not self.status:
            self.status = self._provisional  # the held start leaves with this body
        await self._send(message)


def _logged_path(scope: Scope) -> str:
    """The path as it came, still percent-encoded: the decoded one may hold a line break or an escape sequence,
    and a client could forge log lines with it."""
    raw = scope.get("raw_path")
    path = raw.decode("latin-1") if isinstance(raw, bytes) else scope["path"]
    return path.translate(_UNPRINTABLE)


# Anything but printable ASCII is written as its percent-encoding, and so is the quote that ends the field.
_UNPRINTABLE = {c: f"%{c:02X}" for c in (*range(0x20), 0x22, *range(0x7F, 0x100))}
