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


class Timed(Protocol):
    def deadline_passed(self) -> None:
        """Called once the deadline it was added with has passed (and it was not removed)."""


class Deadlines:
    __slots__ = ("_buckets", "_resolution", "_ticks", "_timer")

    def __init__(self, resolution: float = RESOLUTION) -> None:
        self._resolution = resolution
        self._buckets: dict[int, dict[Timed, None]] = {}
        self._ticks: list[int] = []  # the buckets' ticks, a heap
        self._timer: asyncio.TimerHandle | None = None

    def add(self, when: float, item: Timed) -> int:
        """Call `item.deadline_passed()` once the loop's clock passes `when`. Returns what `remove` takes."""
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

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_at(tick * self._resolution, self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = asyncio.get_running_loop().time()
        ticks, buckets = self._ticks, self._buckets
        while ticks and ticks[0] * self._resolution <= now:
            # Popped before its items run: one that adds a deadline again gets a new bucket, for a later tick.
            for item in buckets.pop(heapq.heappop(ticks)):
                try:
                    item.deadline_passed()
                except Exception:
                    logger.exception("a deadline's callback failed")
        if ticks:
            self._arm(ticks[0])
