"""`LoopTurns`: giving the event loop a turn when a task has run on without one, and only then.

Neither a buffered upstream read nor a send to a client that keeps up suspends, so a fast stream could run on
without giving the loop a turn: other streams would starve, and a disconnect could not stop this one until the
upstream's buffers ran dry. Yielding every few milliseconds of the stream's life, as this did before, also yielded
once per token of a paced stream, which suspends between tokens anyway: a loop iteration per token (bench/, paced
CPU: about 6 % of it). A `call_soon` callback tells instead when the loop last turned.
"""

from __future__ import annotations

import asyncio

YIELD_AFTER_SECONDS = 0.005


class LoopTurns:
    __slots__ = ("_last_turn", "_loop", "_pending")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._last_turn = loop.time()
        self._pending = False

    async def after_step(self) -> None:
        """Call after each step of work: yields if the loop has not turned for `YIELD_AFTER_SECONDS`."""
        if not self._pending:
            self._pending = True
            self._loop.call_soon(self._turned)
        elif self._loop.time() - self._last_turn > YIELD_AFTER_SECONDS:
            await asyncio.sleep(0)

    def _turned(self) -> None:
        self._pending = False
        self._last_turn = self._loop.time()
