"""Security headers on every response: routed or not (404, 405), errors, and streams.

Added at the edge (`middleware.edge`), around the whole application: Litestar's `response_headers` and middleware
miss unrouted 404/405. Headers a response set itself are left alone.
"""

from __future__ import annotations

from collections.abc import Iterable

from app.settings import SecurityHeaderSettings

Header = tuple[bytes, bytes]


class SecurityHeaders:
    def __init__(self, headers: Iterable[Header]) -> None:
        self._headers = tuple(headers)
        self._names = frozenset(name for name, _ in self._headers)

    @classmethod
    def from_settings(cls, settings: SecurityHeaderSettings) -> SecurityHeaders:
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
        return cls(headers)

    @property
    def names(self) -> frozenset[bytes]:
        return self._names

    def added_to(self, own: Iterable[Header]) -> list[Header]:
        """`own` (a response's headers) and each security header it does not set itself."""
        existing = list(own)
        present = {name.lower() for name, _ in existing} & self._names
        if not present:
            existing += self._headers
            return existing
        return existing + [h for h in self._headers if h[0] not in present]
