"""The in-process backend: the same algorithms as Redis's scripts, for one process (the embedded default)."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

from app.backends.base import Decision


class MemoryBackend:
    def __init__(self) -> None:
        self._tat: dict[str, float] = {}  # GCRA theoretical arrival time per key
        self._leases: dict[str, dict[str, float]] = {}  # key -> lease -> expiry
        self._calls = 0

    def _sweep(self, now: float) -> None:
        # A key whose arrival time has passed is back to a full budget: forgetting it changes nothing.
        self._calls += 1
        if self._calls % 4096 == 0:
            self._tat = {k: v for k, v in self._tat.items() if v > now}

    async def open(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self._tat.clear()
        self._leases.clear()

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        return self._gcra(key, 1, limit, window)

    async def reserve(self, key: str, amount: int, limit: int, window: float) -> Decision:
        return self._gcra(key, amount, limit, window)

    async def settle(self, key: str, reserved: int, actual: int, limit: int, window: float) -> None:
        now = time.monotonic()
        delta = (actual - reserved) * window / limit
        tat = self._tat.get(key, now)
        # An extra charge starts from now if the budget had recovered; a refund never reaches into the past.
        base = max(tat, now) if delta > 0 else tat
        self._tat[key] = max(now, base + delta)

    def _gcra(self, key: str, cost: int, limit: int, window: float) -> Decision:
        now = time.monotonic()
        self._sweep(now)
        emission = window / limit
        tat = max(self._tat.get(key, now), now)
        new_tat = tat + cost * emission
        allowed_at = new_tat - window
        if allowed_at > now + 1e-9:
            return Decision(False, limit, 0, allowed_at - now)
        self._tat[key] = new_tat
        remaining = max(0, math.floor((now - allowed_at) / emission + 1e-9))
        return Decision(True, limit, min(remaining, limit), new_tat - now)

    async def acquire(self, key: str, lease: str, limit: int, ttl: float) -> Decision:
        now = time.monotonic()
        leases = {k: v for k, v in self._leases.get(key, {}).items() if v > now}
        if len(leases) >= limit and lease not in leases:
            self._leases[key] = leases
            return Decision(False, limit, 0, min(leases.values()) - now)
        leases[lease] = now + ttl
        self._leases[key] = leases
        return Decision(True, limit, limit - len(leases), ttl)

    async def assert_leases(self, leases: Iterable[tuple[str, str]], ttl: float) -> None:
        expiry = time.monotonic() + ttl
        for key, lease in leases:
            self._leases.setdefault(key, {})[lease] = expiry

    async def release(self, key: str, lease: str) -> None:
        leases = self._leases.get(key)
        if leases is not None:
            leases.pop(lease, None)
            if not leases:
                del self._leases[key]
