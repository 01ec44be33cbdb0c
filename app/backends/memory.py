"""The in-process backend: the same algorithms as Redis's scripts, for one process (the embedded default), and
the limiter's fallback while Redis fails.

Its size follows what is live, not what ever was: every `SWEEP_SECONDS` it forgets budgets that have recovered
in full and leases that have expired, so a million clients that came once leave nothing behind.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

from app.backends.base import Ask, Decision, Verdict

SWEEP_SECONDS = 5.0


class MemoryBackend:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._requests: dict[str, float] = {}  # GCRA theoretical arrival time per key, one table per limit
        self._tokens: dict[str, float] = {}
        self._leases: dict[str, dict[str, float]] = {}  # key -> lease -> expiry
        self._records: dict[str, tuple[float, bytes]] = {}  # open stream -> (expiry, record)
        self._swept = clock()

    @property
    def entries(self) -> int:
        """How many keys it holds (what a sweep bounds)."""
        return len(self._requests) + len(self._tokens) + len(self._leases)

    def _now(self) -> float:
        now = self._clock()
        if now - self._swept >= SWEEP_SECONDS:
            self._swept = now
            # A key whose arrival time has passed is back to a full budget: forgetting it changes nothing.
            self._requests = {k: v for k, v in self._requests.items() if v > now}
            self._tokens = {k: v for k, v in self._tokens.items() if v > now}
            live = ((k, {lease: x for lease, x in held.items() if x > now}) for k, held in self._leases.items())
            self._leases = {k: held for k, held in live if held}
            self._records = {k: r for k, r in self._records.items() if r[0] > now}
        return now

    async def open(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    async def aclose(self) -> None:
        self._requests.clear()
        self._tokens.clear()
        self._leases.clear()
        self._records.clear()

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        now = self._now()
        tat, decision = _gcra(self._requests.get(key, now), now, 1, limit, window)
        if decision.allowed:
            self._requests[key] = tat
        return decision

    async def admit(self, key: str, lease: str, ask: Ask) -> Verdict:
        now = self._now()
        request_tat = token_tat = 0.0
        remaining, reset = 0, 0.0
        if ask.requests:
            request_tat, decision = _gcra(self._requests.get(key, now), now, 1, ask.requests, ask.window)
            if not decision.allowed:
                return Verdict("requests_per_minute", 0, decision.reset_after)
            remaining, reset = decision.remaining, decision.reset_after
        held = self._leases.get(key)
        if ask.streams and held is not None and len(held) >= ask.streams and lease not in held:
            # Only a principal at its limit pays for forgetting expired leases: admission stays O(1) otherwise.
            for expired in [k for k, x in held.items() if x <= now]:
                del held[expired]
            if len(held) >= ask.streams:
                return Verdict("concurrent_streams", 0, min(held.values()) - now)
        if ask.token_budget:
            token_tat, decision = _gcra(self._tokens.get(key, now), now, ask.tokens, ask.token_budget, ask.window)
            if not decision.allowed:
                return Verdict("tokens_per_minute", 0, decision.reset_after)
        if ask.requests:
            self._requests[key] = request_tat
        if ask.streams:
            self._leases.setdefault(key, {})[lease] = now + ask.lease_ttl
        if ask.token_budget:
            self._tokens[key] = token_tat
        return Verdict(None, remaining, reset)

    def _settle(self, key: str, reserved: int, actual: int, limit: int, window: float) -> None:
        now = self._now()
        delta = (actual - reserved) * window / limit
        tat = self._tokens.get(key, now)
        # An extra charge starts from now if the budget had recovered; a refund never reaches into the past.
        base = max(tat, now) if delta > 0 else tat
        if base + delta > now:
            self._tokens[key] = base + delta
        else:
            self._tokens.pop(key, None)

    async def finish(
        self,
        key: str,
        lease: str | None,
        *,
        reserved: int,
        actual: int,
        limit: int,
        window: float,
        stream: str | None = None,
    ) -> None:
        if lease is not None:
            self._release(key, lease)
        if reserved:
            self._settle(key, reserved, actual, limit, window)
        if stream is not None:
            self._records.pop(stream, None)

    async def assert_leases(
        self,
        leases: Iterable[tuple[str, str]],
        ttl: float,
        records: Iterable[tuple[str, bytes]] = (),
        replica: str | None = None,
    ) -> list[tuple[str, str]]:
        expiry = self._now() + ttl
        for key, lease in leases:
            self._leases.setdefault(key, {})[lease] = expiry
        for stream_id, record in records:
            self._records[stream_id] = (expiry, record)
        return []  # one process: a cancel reaches its stream directly, never through the heartbeat

    async def request_cancel(self, stream_id: str, replica: str, reason: str) -> None:
        return None  # one process: every stream is local

    async def hear_cancels(self, replica: str, on_cancel: Callable[[str, str], None]) -> None:
        return None

    async def streams(self, after: str | None, count: int) -> tuple[list[bytes], str | None]:
        now = self._now()
        ids = sorted(k for k, (expiry, _) in self._records.items() if expiry > now and (after is None or k > after))
        page = ids[:count]
        return [self._records[k][1] for k in page], (page[-1] if len(ids) > count else None)

    async def stream(self, stream_id: str) -> bytes | None:
        found = self._records.get(stream_id)
        return found[1] if found is not None and found[0] > self._now() else None

    async def release_all(self, leases: Iterable[tuple[str, str]], streams: Iterable[str] = ()) -> None:
        for key, lease in leases:
            self._release(key, lease)
        for stream_id in streams:
            self._records.pop(stream_id, None)

    def _release(self, key: str, lease: str) -> None:
        leases = self._leases.get(key)
        if leases is not None:
            leases.pop(lease, None)
            if not leases:
                del self._leases[key]


def _gcra(tat: float, now: float, cost: int, limit: int, window: float) -> tuple[float, Decision]:
    """GCRA for `cost` units of `limit` per `window`: the new arrival time to store if allowed, and the decision."""
    emission = window / limit
    new_tat = max(tat, now) + cost * emission
    allowed_at = new_tat - window
    if allowed_at > now + 1e-9:
        return new_tat, Decision(False, limit, 0, allowed_at - now)
    remaining = max(0, math.floor((now - allowed_at) / emission + 1e-9))
    return new_tat, Decision(True, limit, min(remaining, limit), new_tat - now)
