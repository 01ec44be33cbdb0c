"""The two routes every token goes through, `POST /v1/chat/completions` and `POST /chat/stream`, served as plain
ASGI in front of Litestar.

Litestar's router, its dependency resolution and its exception layer (which wraps every `send` of the stream
twice) cost about a tenth of a millisecond of CPU per request, all of it before the upstream call and so in the
time to first token (bench/). Nothing else differs: the same route function (`open_chat_completion`,
`open_chat_stream`), the same body reader and limits, the same error JSON (`client_error`) and the same CORS
headers (`middleware.cors`). Any other method on these paths (an `OPTIONS` preflight, a 405) and every other path
goes on to Litestar, where these routes stay registered.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from litestar import Request
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Receive, Scope, Send

from app.error_handlers import client_error, error_reply
from app.request_context import request_id_of
from middleware.cors import CorsHeaders

Route = Callable[[Request[Any, Any, Any]], Awaitable[ASGIApp]]


class HotRoutes:
    __slots__ = ("_app", "_cors", "_routes")

    def __init__(self, app: ASGIApp, routes: Mapping[str, Route], cors: CorsHeaders | None) -> None:
        self._app = app
        self._routes = dict(routes)
        self._cors = cors

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (
            self._routes.get(scope["path"]) if scope["type"] == ScopeType.HTTP and scope["method"] == "POST" else None
        )
        if route is None:
            await self._app(scope, receive, send)
            return
        if self._cors is not None:
            origin, has_cookie = _origin_and_cookie(scope)
            if origin is not None:
                send = self._cors.wrap(send, origin, has_cookie=has_cookie)
        request: Request[Any, Any, Any] = Request(scope, receive, send)
        try:
            reply = await route(request)
        except Exception as exc:
            reply = error_reply(client_error(exc, "POST", scope["path"]), request_id_of(scope))
        await reply(scope, receive, send)


def _origin_and_cookie(scope: Scope) -> tuple[str | None, bool]:
    origin: str | None = None
    has_cookie = False
    for name, value in scope["headers"]:
        if name == b"origin":
            origin = value.decode("latin-1")
        elif name == b"cookie":
            has_cookie = True
    return origin, has_cookie
