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


class DisconnectWatch:
    """Calls `on_left` once if the client leaves before `close()`, and never after it; `left` tells whether it did."""

    __slots__ = ("_closed", "_left", "_notify", "_on_left", "_task", "left")

    def __init__(self, scope: Scope, receive: Receive, on_left: Callable[[], object]) -> None:
        notify: Notify | None = scope.get(NOTIFY_DISCONNECT)  # type: ignore[assignment]
        self._notify = notify
        self._on_left = on_left
        self._closed = False
        self.left = False
        self._left = self._client_left  # one bound method: `Notify` takes back the very object it was given
        self._task: asyncio.Task[None] | None = None
        if notify is not None:
            notify(self._left, True)
        else:
            self._task = asyncio.get_running_loop().create_task(_wait_for_disconnect(receive, self._left))

    def _client_left(self) -> None:
        if not self._closed:
            self._closed = True
            self.left = True
            self._on_left()

    def close(self) -> None:
        self._closed = True
        if self._notify is not None:
            self._notify(self._left, False)
            self._notify = None
        if self._task is not None:
            self._task.cancel()


async def _wait_for_disconnect(receive: Receive, on_left: Callable[[], None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    on_left()
