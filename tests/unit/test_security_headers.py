"""The edge adds the security headers what a response lacks and never overwrites what it set itself."""

from __future__ import annotations

from typing import Any

import pytest

from app.settings import SecurityHeaderSettings
from middleware.edge import EdgeMiddleware
from middleware.security_headers import SecurityHeaders

pytestmark = pytest.mark.anyio


async def headers_sent(own: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    async def page(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": list(own)})
        await send({"type": "http.response.body", "body": b"<p>hi</p>"})

    sent: list[Any] = []

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b""}

    middleware = EdgeMiddleware(page, SecurityHeaders.from_settings(SecurityHeaderSettings()))
    scope = {"type": "http", "method": "GET", "path": "/", "http_version": "1.1", "headers": []}
    await middleware(scope, receive, send)  # type: ignore[arg-type]
    headers: list[tuple[bytes, bytes]] = sent[0]["headers"]
    return headers


async def test_a_header_the_response_set_itself_is_kept() -> None:
    own = [(b"Content-Security-Policy", b"default-src 'self'"), (b"x-frame-options", b"SAMEORIGIN")]
    headers = await headers_sent(own)
    by_name: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        by_name.setdefault(name.lower(), []).append(value)
    assert by_name[b"content-security-policy"] == [b"default-src 'self'"]
    assert by_name[b"x-frame-options"] == [b"SAMEORIGIN"]
    assert by_name[b"x-content-type-options"] == [b"nosniff"]  # what it did not set is still added
    assert b"referrer-policy" in by_name


async def test_every_configured_header_is_added_to_a_response_without_them() -> None:
    names = {name for name, _ in await headers_sent([])}
    assert names == SecurityHeaders.from_settings(SecurityHeaderSettings()).names | {b"x-request-id"}
