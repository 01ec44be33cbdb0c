"""Reading a browser session where Litestar's session middleware does not run (the stream routes).

The middleware would save the session, a store write and a `Set-Cookie`, at the start of every response, including
every stream; so it runs only on `/auth/session`, which writes sessions, and the other routes read one here, with
Litestar's own backend, only when the request brought a session cookie.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie
from litestar.middleware.session.server_side import ServerSideSessionBackend, ServerSideSessionConfig

from app.errors import LimitsUnavailable
from app.incoming import Incoming
from app.session_store import BoundedMemoryStore

logger = logging.getLogger("tokenrelay.sessions")

SKIP_SESSION = "skip_session"


class SessionReader:
    def __init__(self, config: ServerSideSessionConfig, *, required: bool) -> None:
        self._config = config
        self._backend = ServerSideSessionBackend(config)
        self._required = required  # with auth on, a session that cannot be read is an outage, not "no session"

    async def read(self, connection: Incoming) -> dict[str, Any] | None:
        if "cookie" not in connection.headers:
            return None  # most API clients send no cookie: skip parsing
        if not isinstance(connection, ASGIConnection):  # a `HotRequest`: Litestar's backend reads its own kind
            connection = ASGIConnection(connection.scope, connection.receive)
        if self._config.key not in connection.cookies:
            return None
        try:
            data = await self._backend.load_from_connection(connection)
        except Exception as exc:
            # Any store failure (Redis down, timeouts) lands here: the store's exceptions are its own.
            logger.warning("session store unavailable: %s", exc)
            if self._required:
                raise LimitsUnavailable("sessions are unavailable; try again shortly", retry_after=1) from exc
            return None
        return data or None

    async def has_room(self, connection: ASGIConnection[Any, Any, Any, Any]) -> bool:
        """Whether the store takes one more session (Redis always does: its sessions expire by TTL)."""
        store = self._config.get_store_from_app(connection.scope["app"])
        if not isinstance(store, BoundedMemoryStore) or await store.has_room():
            return True
        logger.warning("session store full (sessions.max_sessions: %d): login refused", store.size)
        return False

    async def end(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Cookie:
        """Delete the connection's session from the store; the cookie returned expires it in the browser now.

        (Litestar's own clearing sends `Expires` in the past beside the configured `Max-Age`, and browsers obey
        `Max-Age`: the cookie would live on for a day.)
        """
        session_id = connection.cookies.get(self._config.key)
        if session_id:
            store = self._config.get_store_from_app(connection.scope["app"])
            await self._backend.delete(session_id, store=store)
        return Cookie(
            key=self._config.key,
            value="",
            max_age=0,
            expires=0,
            path=self._config.path,
            secure=self._config.secure,
            httponly=True,
            samesite=self._config.samesite,
        )
