"""`KeepAlive`: a `: ping` comment after each interval of silence on one response.

One deadline per idle interval, not one per write: when it passes, it pings if the response was silent for the
whole interval, and waits for the time still to go otherwise. The deadlines of all responses share one loop timer
(`app/deadlines.py`). The ping is sent from a task of its own, since a deadline's callback cannot await; a write
between the ping falling due and the task running makes it unnecessary.
"""

from __future__ import annotations

import asyncio

from litestar.types import Send

from app.deadlines import Deadlines


class Pings:
    """What the keep-alives of a process share: their interval, and the deadlines they wait on."""

    __slots__ = ("_deadlines", "interval")

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._deadlines = Deadlines()

    def keepalive(self, send: Send, body: bytes) -> KeepAlive:
        """A keep-alive for one response, sending `body` on `send`; it waits until `start`."""
        return KeepAlive(self._deadlines, send, self.interval, body)


class KeepAlive:
    __slots__ = (
        "_body", "_deadlines", "_interval", "_loop", "_ping", "_send", "_stopped", "_tick", "last_write", "writes",
    )  # fmt: skip

    def __init__(self, deadlines: Deadlines, send: Send, interval: float, body: bytes) -> None:
        self._loop = asyncio.get_running_loop()
        self._deadlines = deadlines
        self._send = send
        self._interval = interval
        self._body = body
        self._tick: int | None = None
        self._ping: asyncio.Task[None] | None = None
        self._stopped = False
        self.writes = 0
        self.last_write = self._loop.time()

    def wrote(self) -> None:
        self.writes += 1
        self.last_write = self._loop.time()

    def start(self) -> None:
        self.last_write = self._loop.time()
        self._arm(self._interval)

    def stop(self) -> None:
        self._stopped = True
        if self._tick is not None:
            self._deadlines.remove(self._tick, self)
            self._tick = None
        if self._ping is not None:
            self._ping.cancel()

    def _arm(self, delay: float) -> None:
        self._tick = self._deadlines.add(self._loop.time() + delay, self)

    def deadline_passed(self) -> None:
        self._tick = None
        if self._stopped:
            return
        idle = self._loop.time() - self.last_write
        if idle >= self._interval:
            self.last_write = self._loop.time()
            if self._ping is None or self._ping.done():  # one at a time: one waiting for the client covers this
                self._ping = self._loop.create_task(self._send_ping(self.writes))
                self._ping.add_done_callback(self._ping_done)
            idle = 0.0
        self._arm(self._interval - idle)

    def _ping_done(self, _: asyncio.Task[None]) -> None:
        self._ping = None

    async def _send_ping(self, writes_when_due: int) -> None:
        if not self._stopped and self.writes == writes_when_due:
            await self._send({"type": "http.response.body", "body": self._body, "more_body": True})
