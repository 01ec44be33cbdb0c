"""`Deadlines`: many coarse deadlines on one loop timer.

Every open stream carries two deadlines that it almost never reaches: its next keep-alive (`app/keepalive.py`) and
its upstream read timeout (`providers/httptools_connection.py`). As loop timers they were two handles each, with a
libuv timer and a context copy apiece: 1 KiB of every open stream, and a timer made on every re-arm. Here a
deadline is an entry in the bucket of its tick (`resolution` seconds): adding and removing one are dict operations,
and the loop holds one timer, for the earliest tick. A deadline is met up to one tick late and never early, which
both users allow (a ping after 15 s of silence, a read timeout of seconds); each checks the time itself anyway
and adds its deadline again when it is not due yet.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
from typing import Protocol

logger = logging.getLogger("tokenrelay.deadlines")

RESOLUTION = 0.05
# How late a timer is armed after the time it waits for: uvloop's clock counts whole milliseconds, and a timer armed
# on the dot could run a float step early, find nothing due and come back at once until the millisecond changed.
CLOCK_STEP = 0.001


class Timed(Protocol):
    def deadline_passed(self) -> None:
        """Called once the deadline it was added with has passed (and it was not removed)."""


class Deadlines:
    __slots__ = ("_buckets", "_firing", "_loop", "_resolution", "_ticks", "_timer")

    def __init__(self, resolution: float = RESOLUTION) -> None:
        self._resolution = resolution
        self._buckets: dict[int, dict[Timed, None]] = {}
        self._ticks: list[int] = []  # the buckets' ticks, a heap
        self._timer: asyncio.TimerHandle | None = None
        self._firing: tuple[int, dict[Timed, None]] | None = None  # the bucket whose items are being called
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, when: float, item: Timed) -> int:
        """Call `item.deadline_passed()` once the loop's clock passes `when`. Returns what `remove` takes."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # made before its loop ran (the app is built first), or moved to another
            self._loop, self._buckets, self._ticks, self._timer = loop, {}, [], None
        tick = math.ceil(when / self._resolution)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = {}
            heapq.heappush(self._ticks, tick)
            if self._ticks[0] == tick:
                self._arm(tick)
        bucket[item] = None
        return tick

    def remove(self, tick: int, item: Timed) -> None:
        bucket = self._buckets.get(tick)
        if bucket is not None:
            bucket.pop(item, None)  # an emptied bucket stays until its tick: the timer may be armed for it
        elif self._firing is not None and self._firing[0] == tick:
            self._firing[1].pop(item, None)

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(tick * self._resolution + CLOCK_STEP, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        ticks, buckets = self._ticks, self._buckets
        try:
            while ticks and ticks[0] * self._resolution <= now:
                tick = heapq.heappop(ticks)
                # Taken out before its items run: one that adds a deadline again gets a new bucket, for a later
                # tick; one removed by an item called before it is not called.
                bucket = buckets.pop(tick)
                self._firing = (tick, bucket)
                for item in list(bucket):
                    if item not in bucket:
                        continue
                    del bucket[item]
                    try:
                        item.deadline_passed()
                    except Exception:
                        logger.exception("a deadline's callback failed")
        finally:
            self._firing = None
            if ticks:
                self._arm(ticks[0])
