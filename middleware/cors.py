"""CORS headers on an actual (not preflight) response, for the routes served outside Litestar (`app.hot_routes`).

The same headers, from the same `CORSConfig`, that Litestar's CORS layer writes on its own routes (a test compares
the two); preflights and every other route still go through Litestar's.
"""

from __future__ import annotations

from litestar.config.cors import CORSConfig
from litestar.types import Message, Send

Header = tuple[bytes, bytes]


class CorsHeaders:
    def __init__(self, config: CORSConfig) -> None:
        self._config = config
        fixed = {name.lower(): value for name, value in config.simple_headers.items()}
        fixed["access-control-allow-headers"] = ", ".join(sorted(set(config.allow_headers)))
        fixed["access-control-allow-methods"] = ", ".join(sorted(set(config.allow_methods)))
        self._fixed = [(name.encode(), value.encode("latin-1")) for name, value in fixed.items()]

    def for_origin(self, origin: str, *, has_cookie: bool) -> list[Header]:
        config = self._config
        headers = list(self._fixed)
        # Litestar's rule: a listed origin is echoed; with "*", only a request carrying cookies gets its origin
        # echoed (a credentialed response may not say "*").
        if config.is_origin_allowed(origin) and (has_cookie or not config.is_allow_all_origins):
            headers = [h for h in headers if h[0] != b"access-control-allow-origin"]
            headers += [(b"access-control-allow-origin", origin.encode("latin-1")), (b"vary", b"Origin")]
        return headers

    def wrap(self, send: Send, origin: str, *, has_cookie: bool) -> Send:
        """`send`, adding the headers for `origin` to the response's start (replacing any of the same name)."""
        added = self.for_origin(origin, has_cookie=has_cookie)
        names = {name for name, _ in added}

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                own = [h for h in message.get("headers", ()) if h[0].lower() not in names]
                message["headers"] = own + added
            await send(message)

        return send_with_cors
