"""`HotRequest` reads a request as Litestar's `Request` does, where the stream routes read it."""

from __future__ import annotations

from typing import Any, cast

from litestar import Request
from litestar.types import Scope

from app.incoming import HotRequest


async def _receive() -> Any:
    return {"type": "http.request", "body": b"", "more_body": False}


def test_headers_and_client_read_as_litestar_reads_them() -> None:
    scope = cast(
        Scope,
        {
            "type": "http",
            "method": "POST",
            "path": "/v1/chat/completions",
            "headers": [
                (b"authorization", b"Bearer first"),
                (b"x-forwarded-for", b"203.0.113.7"),
                (b"authorization", b"Bearer second"),
                (b"x-caf\xe9", b"cr\xe8me"),
            ],
            "client": ("198.51.100.2", 4242),
            "state": {},
        },
    )
    hot = HotRequest(scope, _receive)
    litestar: Request[Any, Any, Any] = Request(scope, _receive)
    for name in ("authorization", "x-forwarded-for", "x-caf\xe9", "content-type"):
        assert hot.headers.get(name) == litestar.headers.get(name)
    assert hot.client == litestar.client
    assert HotRequest(cast(Scope, {**scope, "client": None}), _receive).client is None
