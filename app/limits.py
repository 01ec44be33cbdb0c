"""Admission: the per-principal limits a stream must pass before anything is sent upstream.

Three limits, each 0 when off: requests per minute (`hit`), open streams (`acquire`, one lease per stream, renewed
by a per-process heartbeat, released when the stream ends in any way, expiring by TTL if the process dies) and
tokens per minute (`reserve` the prompt estimate plus `max_tokens` at admission, `settle` with the real usage at
the end). If the shared store fails, `fail_open` decides with an in-process fallback (logged) and `fail_closed`
refuses with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable

from app.backends.base import Backend, BackendUnavailable, Decision
from app.backends.memory import MemoryBackend
from app.errors import LimitsUnavailable, RateLimited
from app.settings import KeyLimitSettings, LimitSettings

logger = logging.getLogger("tokenrelay.limits")

WINDOW_SECONDS = 60.0
STREAM_SECONDS_WEIGHT = 0.1  # of each finished stream in the moving average of stream length
_LABELS = {
    "requests_per_minute": "requests per minute",
    "concurrent_streams": "open streams",
    "tokens_per_minute": "tokens per minute",
}


class Admission:
    """What one stream was granted. `close()` gives it back, once, however the stream ended."""

    def __init__(
        self,
        limiter: Limiter,
        principal: str,
        lease: str | None,
        reserved: tuple[int, int],
        headers: dict[str, str],
    ) -> None:
        self._limiter = limiter
        self.principal = principal
        self._lease = lease
        self._reserved = reserved  # (tokens reserved, the budget they came from)
        self.headers = headers
        self._closed = False
        self._opened = time.monotonic()

    async def close(self, used_tokens: int) -> None:
        if self._closed:
            return
        self._closed = True
        if self._lease is not None:
            self._limiter.stream_lasted(time.monotonic() - self._opened)
        await self._limiter.give_back(self.principal, self._lease, self._reserved, used_tokens)


class Limiter:
    def __init__(self, settings: LimitSettings, backend: Backend) -> None:
        self._settings = settings
        self._backend = backend
        self._fallback = MemoryBackend()
        self._leases: set[tuple[str, str]] = set()
        self._heartbeat: asyncio.Task[None] | None = None
        self.fallback_decisions = 0  # decisions made locally because the shared store failed
        self._mean_stream_seconds: float | None = None  # how long this process's streams last (moving average)

    async def open(self) -> None:
        await self._backend.open()
        problem: BackendUnavailable | None = None
        try:
            await self._backend.ping()
        except BackendUnavailable as exc:
            problem = exc  # one line, outside the handler: an operator needs the cause, not a traceback
        if problem is not None and self._settings.on_backend_failure == "fail_closed":
            logger.error("%s; limited requests get 503 until it answers (fail_closed)", problem)
        elif problem is not None:
            logger.warning("%s; limits are decided in this process until it answers (fail_open)", problem)
        self._heartbeat = asyncio.get_running_loop().create_task(self._renew_leases())

    async def aclose(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        await self._backend.aclose()

    async def check_request(self, principal: str) -> dict[str, str]:
        """Count a request that opens no stream (e.g. a session login); returns the X-RateLimit headers."""
        rpm = self._settings.requests_per_minute
        if not rpm:
            return {}
        decision = await self._decide(lambda b: b.hit(principal, rpm, WINDOW_SECONDS))
        headers = _headers(decision)
        if not decision.allowed:
            raise _refused(principal, "requests_per_minute", decision.limit, decision.reset_after, headers)
        return headers

    async def admit(
        self, principal: str, stream_id: str, token_estimate: int, overrides: KeyLimitSettings | None = None
    ) -> Admission:
        limits = self._settings
        if overrides is not None:
            chosen = {k: v for k, v in overrides.model_dump().items() if v is not None}
            limits = limits.model_copy(update=chosen)
        headers: dict[str, str] = {}
        if limits.requests_per_minute:
            rpm = limits.requests_per_minute
            decision = await self._decide(lambda b: b.hit(principal, rpm, WINDOW_SECONDS))
            headers = _headers(decision)
            if not decision.allowed:
                raise _refused(principal, "requests_per_minute", decision.limit, decision.reset_after, headers)
        lease: str | None = None
        if limits.concurrent_streams:
            ttl, most = limits.lease_ttl_seconds, limits.concurrent_streams
            decision = await self._decide(lambda b: b.acquire(principal, stream_id, most, ttl))
            if not decision.allowed:
                # A lease's expiry says when a crashed process's stream stops counting, not when a live one
                # ends: the wait is estimated from how long streams last instead.
                wait = self.expected_wait(most)
                stream_headers = _headers(Decision(False, most, 0, wait))
                raise _refused(principal, "concurrent_streams", most, wait, stream_headers)
            lease = stream_id
            self._leases.add((principal, stream_id))
        reserved = (0, 0)
        if limits.tokens_per_minute:
            amount, budget = min(token_estimate, limits.tokens_per_minute), limits.tokens_per_minute
            decision = await self._decide(lambda b: b.reserve(principal, amount, budget, WINDOW_SECONDS))
            if not decision.allowed:
                await self.give_back(principal, lease, (0, 0), 0)
                raise _refused(principal, "tokens_per_minute", decision.limit, decision.reset_after, _headers(decision))
            reserved = (amount, budget)
        return Admission(self, principal, lease, reserved, headers)

    def stream_lasted(self, seconds: float) -> None:
        mean = self._mean_stream_seconds
        self._mean_stream_seconds = seconds if mean is None else mean + STREAM_SECONDS_WEIGHT * (seconds - mean)

    def expected_wait(self, open_streams: int) -> float:
        """Seconds until one of `open_streams` running streams is likely to end: with streams of mean length m
        ending independently, the first of n ends after about m / n. At least 1, at most a minute."""
        mean = self._mean_stream_seconds
        if mean is None:
            return 1.0  # nothing measured yet: the first stream to end will tell
        return min(WINDOW_SECONDS, max(1.0, mean / max(1, open_streams)))

    async def give_back(self, principal: str, lease: str | None, reserved: tuple[int, int], used_tokens: int) -> None:
        if lease is not None:
            self._leases.discard((principal, lease))
            await self._quietly(lambda b: b.release(principal, lease))
        amount, budget = reserved
        if amount:
            await self._quietly(lambda b: b.settle(principal, amount, used_tokens, budget, WINDOW_SECONDS))

    async def _decide(self, call: Callable[[Backend], Awaitable[Decision]]) -> Decision:
        try:
            return await call(self._backend)
        except BackendUnavailable as exc:
            if self._settings.on_backend_failure == "fail_closed":
                logger.warning("rate-limit store unavailable, refusing (fail_closed): %s", exc)
                raise LimitsUnavailable("rate limiting is unavailable; try again shortly", retry_after=1) from exc
            self.fallback_decisions += 1
            logger.warning("rate-limit store unavailable, deciding locally (fail_open): %s", exc)
            return await call(self._fallback)

    async def _quietly(self, call: Callable[[Backend], Awaitable[object]]) -> None:
        # Giving back never fails a stream: a lease the store did not hear about expires by its TTL.
        try:
            await call(self._backend)
        except BackendUnavailable as exc:
            logger.warning("rate-limit store unavailable while releasing: %s", exc)
        await call(self._fallback)

    async def _renew_leases(self) -> None:
        """The heartbeat: every ttl / 3, every lease this process holds is asserted again in one round trip, which
        also puts back leases a restarted store lost. It survives any failure (logged) and beats again."""
        ttl = self._settings.lease_ttl_seconds
        while True:
            await asyncio.sleep(ttl / 3)
            held = list(self._leases)
            try:
                await self._backend.assert_leases(held, ttl)
                await self._fallback.assert_leases(held, ttl)
            except BackendUnavailable:
                continue  # the store is down: the leases come back with the first beat after it returns
            except Exception:
                logger.exception("lease heartbeat failed; it beats again in %.1f s", ttl / 3)
                continue
            # A stream that ended while the beat was in flight may have had its lease put back: take it out again.
            for principal, lease in set(held) - self._leases:
                await self.give_back(principal, lease, (0, 0), 0)


def _headers(decision: Decision) -> dict[str, str]:
    return {
        "x-ratelimit-limit": str(decision.limit),
        "x-ratelimit-remaining": str(max(0, decision.remaining)),
        "x-ratelimit-reset": str(math.ceil(time.time() + decision.reset_after)),
    }


def _refused(principal: str, limit: str, value: int, wait: float, headers: dict[str, str]) -> RateLimited:
    """The 429 for `limit` (its config name), with that limit's own headers; logged, naming the limit."""
    retry_after = max(1, math.ceil(wait))
    logger.info("admission refused principal=%s limit=%s (%d) retry_after=%d", principal, limit, value, retry_after)
    error = RateLimited(f"rate limit reached: {_LABELS[limit]} ({limit}: {value})", retry_after=retry_after)
    error.extra_headers = headers
    return error
