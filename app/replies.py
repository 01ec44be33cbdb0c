"""Small fixed answers as ASGI apps, for routes that otherwise return a stream (an ASGI app) themselves."""

from __future__ import annotations

from collections.abc import Iterable

import msgspec
from litestar.types import Receive, Scope, Send


async def no_content(scope: Scope, receive: Receive, send: Send) -> None:
    """204: a finished stream with nothing after the resume point (EventSource stops reconnecting on it)."""
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class Reply:
    """A whole answer known in advance: a status, headers and a body."""

    __slots__ = ("_body", "_headers", "_status")

    def __init__(self, status: int, headers: Iterable[tuple[bytes, bytes]], body: bytes) -> None:
        self._status = status
        self._headers = list(headers)
        self._body = body

    @classmethod
    def json(cls, status: int, data: object, headers: Iterable[tuple[bytes, bytes]] = ()) -> Reply:
        return cls.json_bytes(status, msgspec.json.encode(data), headers)

    @classmethod
    def json_bytes(cls, status: int, body: bytes, headers: Iterable[tuple[bytes, bytes]] = ()) -> Reply:
        length = str(len(body)).encode()
        return cls(status, [(b"content-type", b"application/json"), (b"content-length", length), *headers], body)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self._status, "headers": self._headers})
        await send({"type": "http.response.body", "body": self._body, "more_body": False})
