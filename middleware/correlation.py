"""Correlation ids: adopt a valid `X-Request-ID` / `X-Correlation-ID` or make one, and echo it on every response.

Pure ASGI wrapped around the whole application (Litestar's own middleware runs only on matched routes, so it
would miss 404 and 405), and it touches nothing but `http.response.start`, so `receive` and disconnects pass
through untouched.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.request_context import REQUEST_ID, set_request_id

_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_INCOMING = (b"x-request-id", b"x-correlation-id")


def incoming_request_id(headers: Any) -> str | None:
    """The first acceptable id among the request's headers; anything else is ignored, never echoed."""
    for wanted in _INCOMING:
        for name, value in headers:
            if name.lower() == wanted:
                try:
                    text: str = value.decode("ascii")
                except UnicodeDecodeError:
                    continue
                if _VALID.fullmatch(text):
                    return text
    return None


class CorrelationIdMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self._app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return
        request_id = incoming_request_id(scope["headers"]) or uuid.uuid4().hex
        set_request_id(scope, request_id)
        header = (b"x-request-id", request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self._app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
