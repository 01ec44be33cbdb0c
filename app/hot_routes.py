"""The two routes every token goes through, `POST /v1/chat/completions` and `POST /chat/stream`, served as plain
ASGI in front of Litestar.

Litestar's router, its dependency resolution and its exception layer (which wraps every `send` of the stream
twice) cost about a tenth of a millisecond of CPU per request, all of it before the upstream call and so in the
time to first token (bench/); so does its `Request`, which the routes get here as a `HotRequest`
(`app/incoming.py`). Nothing else differs: the same route function (`open_chat_completion`, `open_chat_stream`),
the same body reader and limits, the same error JSON (`client_error`) and the same CORS headers
(`middleware.cors`). Any other method on these paths (an `OPTIONS` preflight, a 405) and every other path
goes on to Litestar, where these routes stay registered.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from typing import cast

from litestar.enums import ScopeType
from litestar.types import ASGIApp, HTTPScope, Receive, Scope, Send

from app.arrivals import Arrivals
from app.error_handlers import client_error, error_reply
from app.incoming import HotRequest, Incoming
from app.request_context import request_id_of
from middleware.cors import CorsHeaders

Route = Callable[[Incoming], Awaitable[ASGIApp]]


class HotRoutes:
    __slots__ = ("_app", "_arrivals", "_cors", "_routes")

    def __init__(self, app: ASGIApp, routes: Mapping[str, Route], cors: CorsHeaders | None) -> None:
        self._app = app
        self._routes = dict(routes)
        self._cors = cors
        self._arrivals = Arrivals()

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine: the awaitable it returns is the whole request, with no frame of this layer around it.
        route = (
            self._routes.get(scope["path"]) if scope["type"] == ScopeType.HTTP and scope["method"] == "POST" else None
        )
        origin, has_cookie, host_ok = _read_headers(scope) if route is not None else (None, False, True)
        if route is None or not host_ok:
            # Litestar answers the rest: every other route, a path with a trailing slash or under a root path,
            # and a malformed Host (its router's 400).
            return self._app(scope, receive, send)
        if self._cors is not None and origin:
            send = self._cors.wrap(send, origin, has_cookie=has_cookie)
        turn = self._arrivals.turn()
        return (
            _serve(route, scope, receive, send) if turn is None else _serve_in_turn(turn, route, scope, receive, send)
        )


async def _serve(route: Route, scope: Scope, receive: Receive, send: Send) -> None:
    reply = await _open(route, scope, receive, send)
    await reply(scope, receive, send)


async def _serve_in_turn(turn: Awaitable[None], route: Route, scope: Scope, receive: Receive, send: Send) -> None:
    await turn  # one of many that arrived together: the streams already open relay meanwhile
    await _serve(route, scope, receive, send)


async def _open(route: Route, scope: Scope, receive: Receive, send: Send) -> ASGIApp:
    """The route's reply, from a `HotRequest` (`app/incoming.py`) on a copy of the scope.

    The copy, because a Litestar connection (made to read a session cookie) keeps what it parses, the headers
    as a multidict of decoded strings, in the scope's state, and the scope lives as long as the stream. On a
    copy, all of it goes with this frame once the stream is open: 2 KiB less for each open stream (measured
    with 1,000 open streams).
    """
    own_scope = cast("HTTPScope", {**scope, "state": {**scope.get("state", {})}})
    request = HotRequest(own_scope, receive)
    try:
        return await route(request)
    except Exception as exc:
        return error_reply(client_error(exc, "POST", scope["path"]), request_id_of(scope))


# What Litestar's router accepts in a Host header (RFC 3986's reg-name, IP literals and a port).
_VALID_HOST = re.compile(rb"\A[0-9A-Za-z!$&'()*+,;=\-._~:\[\]@%]*\Z")


def _read_headers(scope: Scope) -> tuple[str | None, bool, bool]:
    """The first Origin (as the access policy reads it), whether a cookie came, whether the Host is well formed."""
    origin: str | None = None
    has_cookie = False
    host_ok = True
    for name, value in scope["headers"]:
        if name == b"origin":
            if origin is None:
                origin = value.decode("latin-1")
        elif name == b"cookie":
            has_cookie = True
        elif name == b"host":
            host_ok = host_ok and _VALID_HOST.match(value) is not None
    return origin, has_cookie, host_ok
