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

# Set the callback for the connection's loss (None: no longer wanted).
Notify = Callable[[Callable[[], None] | None], None]


class DisconnectWatch:
    """Calls `on_left` once if the client leaves before `close()`."""

    __slots__ = ("_notify", "_task")

    def __init__(self, scope: Scope, receive: Receive, on_left: Callable[[], None]) -> None:
        notify: Notify | None = scope.get(NOTIFY_DISCONNECT)  # type: ignore[assignment]
        self._notify = notify
        self._task: asyncio.Task[None] | None = None
        if notify is not None:
            notify(on_left)
        else:
            self._task = asyncio.get_running_loop().create_task(_wait_for_disconnect(receive, on_left))

    def close(self) -> None:
        if self._notify is not None:
            self._notify(None)
            self._notify = None
        if self._task is not None:
            self._task.cancel()


async def _wait_for_disconnect(receive: Receive, on_left: Callable[[], None]) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    on_left()
