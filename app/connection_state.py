"""uvicorn's per-connection state without its deques.

uvicorn gives each connection a pipeline `deque` and a flow control whose `asyncio.Event` holds another, and each
request an `asyncio.Event` with a third: 760 bytes each, 2.2 KiB of every open stream, for queues that almost always
stay empty (an `Event` has a waiter only while a send waits on a client that stopped reading, or a body read waits
for the next chunk). These stand-ins keep the interfaces uvicorn calls and make their lists only when something
waits or queues. `GuardedHttpToolsProtocol` (`app/server.py`) puts them in place.
"""

from __future__ import annotations

import asyncio
from typing import Any


class LazyEvent:
    """`asyncio.Event`'s interface (`set`, `clear`, `is_set`, `wait`), its waiters listed only while there are any."""

    __slots__ = ("_value", "_waiters")

    def __init__(self, value: bool = False) -> None:
        self._value = value
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        waiters = self._waiters
        waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            waiters.remove(waiter)
            if not waiters and self._waiters is waiters:
                self._waiters = None


class FlowControl:
    """uvicorn's `FlowControl` (reading paused while a request body waits to be read, writing while the client's
    window is full), on a `LazyEvent`."""

    __slots__ = ("_transport", "_writable", "read_paused", "write_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.read_paused = False
        self.write_paused = False
        self._writable = LazyEvent(True)

    async def drain(self) -> None:
        await self._writable.wait()

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self._transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self._transport.resume_reading()

    def pause_writing(self) -> None:
        if not self.write_paused:
            self.write_paused = True
            self._writable.clear()

    def resume_writing(self) -> None:
        if self.write_paused:
            self.write_paused = False
            self._writable.set()


class Pipeline(list[Any]):
    """The requests that came pipelined behind the one being answered: uvicorn queues them with `appendleft` and
    takes the oldest with `pop`, a `deque`'s names."""

    __slots__ = ()

    def appendleft(self, item: Any) -> None:
        self.insert(0, item)
