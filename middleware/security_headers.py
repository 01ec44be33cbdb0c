"""Security headers on every response: routed or not (404, 405), errors, and streams.

Pure ASGI around the whole application, like the correlation id (Litestar's `response_headers` and middleware
miss unrouted 404/405). Headers a response set itself are left alone.
"""

from __future__ import annotations

from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.settings import SecurityHeaderSettings


def security_headers(settings: SecurityHeaderSettings) -> tuple[tuple[bytes, bytes], ...]:
    configured = {
        b"content-security-policy": settings.content_security_policy,
        b"strict-transport-security": settings.strict_transport_security,
        b"x-frame-options": settings.x_frame_options,
        b"referrer-policy": settings.referrer_policy,
        b"cross-origin-opener-policy": settings.cross_origin_opener_policy,
        b"cross-origin-resource-policy": settings.cross_origin_resource_policy,
    }
    headers = [(name, value.encode("latin-1")) for name, value in configured.items() if value]
    headers.append((b"x-content-type-options", b"nosniff"))
    return tuple(headers)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, headers: tuple[tuple[bytes, bytes], ...]) -> None:
        self._app = app
        self._headers = headers
        self._names = frozenset(name for name, _ in headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self._app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                existing = list(message.get("headers", ()))
                present = {name.lower() for name, _ in existing} & self._names
                message["headers"] = existing + [h for h in self._headers if h[0] not in present]
            await send(message)

        await self._app(scope, receive, send_with_headers)
