"""`Arrivals`: requests that come in together open their streams a loop turn's worth at a time.

A thousand requests that arrive in the same instant each run, in one loop turn, everything up to their upstream
call (body, limits, the request to the provider) before any token of an open stream is relayed: 1,000 paced
streams started at once held the loop for 240 ms, and every open stream stalled that long. Here at most
`PER_TURN` streams are let through a turn; the others wait in arrival order and are let through, `PER_TURN` at a
time, on the turns that follow, with the relaying of open streams in between. 64 a turn is about 13 ms of the
loop here, and a burst of 32 (the c=32 benchmark) never waits. A released request runs a turn after it is let
through, so the last turn of a burst can run up to twice `PER_TURN`: a bound, not an exact count.

A lone request pays nothing: nobody waiting and a free place in this turn is a counter and one `call_soon` per
turn. Each waiting request is woken once, when its turn comes: a burst of n costs O(n), where waking every waiter
each turn to look at the clock cost O(n²) (tried, and reverted).
"""

from __future__ import annotations

import asyncio
import collections

PER_TURN = 64


class Arrivals:
    __slots__ = ("_counting", "_opened", "_waiting")

    def __init__(self) -> None:
        self._opened = 0  # streams let through since the turn began
        self._counting = False  # a callback is due that ends the turn's count
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    def turn(self) -> asyncio.Future[None] | None:
        """None to go on at once; else a future to await, done when this request's turn has come."""
        loop = asyncio.get_running_loop()
        if not self._counting:
            self._counting = True
            loop.call_soon(self._next_turn)
        if not self._waiting and self._opened < PER_TURN:
            self._opened += 1
            return None
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiting.append(waiter)
        return waiter

    def _next_turn(self) -> None:
        """Runs once in each loop turn while requests arrive or wait: lets the next ones through."""
        self._opened = 0
        while self._waiting and self._opened < PER_TURN:
            waiter = self._waiting.popleft()
            if not waiter.done():  # its client may have left while it waited
                waiter.set_result(None)
                self._opened += 1
        if self._waiting or self._opened:
            asyncio.get_running_loop().call_soon(self._next_turn)
        else:
            self._counting = False
