"""Learning that a client left, without a task per request.

The ASGI way is a task blocked in `receive()` until `http.disconnect`: per open stream a task, its chain of
coroutines and a future (about 1.5 KiB), and a task made and cancelled per request. tokenrelay's server
(`app/server.py`) offers a callback instead, under `NOTIFY_DISCONNECT` in the scope; under any other server (or an
in-process test client) the task is the fallback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from litestar.types import Receive, Scope

NOTIFY_DISCONNECT = "tokenrelay.notify_disconnect"

# `(callback, True)` asks for `callback` at the connection's loss; `(callback, False)` takes it back, if it is still
# the one asked for (a pipelined request's may already have replaced it).
Notify = Callable[[Callable[[], None], bool], None]


class ConnectionLoss:
    """A connection's side of `Notify`, put in each of its requests' scopes by the server.

    It holds nothing of the connection: a bound method of the protocol would close a cycle (protocol, scope,
    method, protocol) that kept every request's objects alive until the garbage collector came by.
    """

    __slots__ = ("_loop", "_lost", "_on_lost")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lost = False
        self._on_lost: Callable[[], None] | None = None

    def __call__(self, on_lost: Callable[[], None], wanted: bool) -> None:
        if not wanted:
            if self._on_lost is on_lost:
                self._on_lost = None
        elif self._lost:
            self._loop.call_soon(on_lost)
        else:
            self._on_lost = on_lost

    def lost(self) -> None:
        """The connection is gone: tells the callback asked for, if any, and any asked for later."""
        self._lost = True
        on_lost, self._on_lost = self._on_lost, None
        if on_lost is not None:
            on_lost()


class DisconnectWatch:
    """Calls `on_left` once if the client leaves before `close()`, and never after it; `left` tells whether it did."""

    __slots__ = ("_closed", "_notify", "_on_left", "_task", "left")

    def __init__(self, scope: Scope, receive: Receive, on_left: Callable[[], object]) -> None:
        notify: Notify | None = scope.get(NOTIFY_DISCONNECT)  # type: ignore[assignment]
        self._notify = notify
        self._on_left = on_left
        self._closed = False
        self.left = False
        self._task: asyncio.Task[None] | None = None
        if notify is not None:
            notify(self, True)
        else:
            self._task = asyncio.get_running_loop().create_task(_wait_for_disconnect(receive, self))

    def __call__(self) -> None:
        """The client left. The watch is its own callback: `Notify` takes back the very object it was given, and
        a bound method kept for that would be a reference cycle (the watch, its method, the watch)."""
        if not self._closed:
            self._closed = True
            self.left = True
            self._on_left()

    def close(self) -> None:
        self._closed = True
        if self._notify is not None:
            self._notify(self, False)
            self._notify = None
        if self._task is not None:
            self._task.cancel()


async def _wait_for_disconnect(receive: Receive, on_left: Callable[[], None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    on_left()
