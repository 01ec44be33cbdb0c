"""The in-process session store, bounded.

Litestar's `MemoryStore` forgets an expired session only when that session is read again, so sessions minted and
never used would stay forever. This one sweeps the expired ones once a minute and holds at most `max_sessions`;
beyond that a new login is refused (429) until some expire, while the login rate per address keeps any one
client from filling it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

from litestar.stores.memory import MemoryStore

SWEEP_SECONDS = 60.0
FULL_SWEEP_SECONDS = 1.0


class BoundedMemoryStore(MemoryStore):
    def __init__(self, max_sessions: int, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._max = max_sessions
        self._clock = clock
        self._swept = clock()

    @property
    def size(self) -> int:
        # Not `__len__`: an empty store would be falsy, and Litestar then takes its default store instead.
        return len(self._store)

    async def has_room(self) -> bool:
        """Whether one more session fits, after forgetting the expired ones if it is full (at most once a second:
        a sweep reads every session, and a full store must not make each refused login pay for one)."""
        if len(self._store) < self._max:
            return True
        if self._clock() - self._swept >= FULL_SWEEP_SECONDS:
            await self._sweep()
        return len(self._store) < self._max

    async def set(self, key: str, value: str | bytes, expires_in: int | timedelta | None = None) -> None:
        if self._clock() - self._swept >= SWEEP_SECONDS:
            await self._sweep()
        await super().set(key, value, expires_in)

    async def _sweep(self) -> None:
        self._swept = self._clock()
        await self.delete_expired()
