"""`KeepAlive`: a `: ping` comment after each interval of silence on one response.

One timer per idle interval, not one per write: when it fires it pings if the response was silent for the whole
interval, and re-arms for the time still to go otherwise. The ping is sent from a task of its own, since a timer
callback cannot await; a write between the ping falling due and the task running makes it unnecessary.
"""

from __future__ import annotations

import asyncio

from litestar.types import Send


class KeepAlive:
    __slots__ = ("_body", "_interval", "_loop", "_pings", "_send", "_stopped", "_timer", "last_write", "writes")

    def __init__(self, loop: asyncio.AbstractEventLoop, send: Send, interval: float, body: bytes) -> None:
        self._loop = loop
        self._send = send
        self._interval = interval
        self._body = body
        self._timer: asyncio.TimerHandle | None = None
        self._pings: set[asyncio.Task[None]] = set()
        self._stopped = False
        self.writes = 0
        self.last_write = loop.time()

    def wrote(self) -> None:
        self.writes += 1
        self.last_write = self._loop.time()

    def start(self) -> None:
        self.last_write = self._loop.time()
        self._arm(self._interval)

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        for ping in self._pings:
            ping.cancel()

    def _arm(self, delay: float) -> None:
        self._timer = self._loop.call_later(delay, self._due)

    def _due(self) -> None:
        if self._stopped:
            return
        idle = self._loop.time() - self.last_write
        if idle >= self._interval:
            self.last_write = self._loop.time()
            self._pings.add(ping := self._loop.create_task(self._ping(self.writes)))
            ping.add_done_callback(self._pings.discard)
            idle = 0.0
        self._arm(self._interval - idle)

    async def _ping(self, writes_when_due: int) -> None:
        if not self._stopped and self.writes == writes_when_due:
            await self._send({"type": "http.response.body", "body": self._body, "more_body": True})
