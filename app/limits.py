"""Admission: the per-principal limits a stream must pass before anything is sent upstream.

Three limits, each 0 when off: requests per minute, open streams (one lease per stream, renewed by a per-process
heartbeat, given back when the stream ends in any way, expiring by TTL if the process dies) and tokens per minute
(the prompt estimate plus `max_tokens` reserved at admission, settled to the real usage at the end). A stream's
admission is one atomic decision: a refusal by any limit takes nothing from the others. If the shared store
fails, `fail_open` decides with an in-process fallback (logged) and `fail_closed` refuses with 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time

from app.backends.base import Ask, Backend, BackendUnavailable, Decision, LimitName
from app.backends.memory import MemoryBackend
from app.errors import LimitsUnavailable, RateLimited
from app.registry import StopReason, StreamRegistry
from app.settings import KeyLimitSettings, LimitSettings

logger = logging.getLogger("tokenrelay.limits")

WINDOW_SECONDS = 60.0
ORPHAN_SETTLES_SECONDS = 2.0  # beyond any store time-out: an orphan this old has reached the store, or never will
STREAM_SECONDS_WEIGHT = 0.1  # of each finished stream in the moving average of stream length
_LABELS = {
    "requests_per_minute": "requests per minute",
    "concurrent_streams": "open streams",
    "tokens_per_minute": "tokens per minute",
    "sessions.logins_per_minute": "logins per minute",
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
        *,
        stream_id: str,
        local: bool,
    ) -> None:
        self._limiter = limiter
        self.principal = principal
        self._stream_id = stream_id
        self._lease = lease
        self._reserved = reserved  # (tokens reserved, the budget they came from)
        self._local = local  # decided by the fallback, while the shared store failed
        self.headers = headers
        self._closed = False
        self._opened = time.monotonic()

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self, used_tokens: int) -> None:
        if self._closed:
            return
        self._closed = True
        if self._lease is not None:
            self._limiter.stream_lasted(time.monotonic() - self._opened)
        await self._limiter.give_back(
            self.principal, self._stream_id, self._lease, self._reserved, used_tokens, local=self._local
        )


_STOP_REASONS: dict[str, StopReason] = {"admin": "admin", "client": "client"}  # what another replica may ask
# A new stream's record is written this soon after its start (with those of every stream opened meanwhile), so
# that another replica can list and stop it at once rather than after the next heartbeat.
ANNOUNCE_SECONDS = 0.05
HEARTBEAT_SECONDS = 2.0  # at most: the registry's records are this fresh; leases need only a third of their TTL


class Limiter:
    """Admission, and the replica's one heartbeat: its leases and the registry's records in one round trip."""

    def __init__(self, settings: LimitSettings, backend: Backend, registry: StreamRegistry | None = None) -> None:
        self._settings = settings
        self._backend = backend
        self._registry = registry
        # Decides only while the shared store fails, seeded with this process's open streams; dropped as soon
        # as the heartbeat reaches the store again, so it never holds more than an outage's worth.
        self._fallback: MemoryBackend | None = None
        self._leases: set[tuple[str, str]] = set()
        # Leases an admission may have taken without hearing so (a time-out), with when: released at the next
        # good beat, or forgotten after a TTL, when the store has expired them by itself.
        self._orphans: dict[tuple[str, str], float] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._announcer: asyncio.Task[None] | None = None
        self._opened = asyncio.Event()
        self._cancels: asyncio.Task[None] | None = None  # hears this replica's cancel messages
        self.fallback_decisions = 0  # decisions made locally because the shared store failed
        self._mean_stream_seconds: float | None = None  # how long this process's streams last (moving average)
        self._per_key: dict[KeyLimitSettings, LimitSettings] = {}  # one entry per configured key's overrides

    @property
    def local_entries(self) -> int:
        """Keys the fallback holds: none unless the shared store is failing now."""
        return 0 if self._fallback is None else self._fallback.entries

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
        loop = asyncio.get_running_loop()
        self._heartbeat = loop.create_task(self._renew_leases())
        if self._registry is not None:
            self._cancels = loop.create_task(self._backend.hear_cancels(self._registry.replica, self._on_cancel))
            self._registry.on_add = self._opened.set
            self._announcer = loop.create_task(self._announce(self._registry))

    def _on_cancel(self, stream_id: str, reason: str) -> None:
        if self._registry is not None and reason in _STOP_REASONS:
            self._registry.stop(stream_id, _STOP_REASONS[reason])

    async def aclose(self) -> None:
        for task in (self._heartbeat, self._cancels, self._announcer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self._backend.aclose()

    async def check_request(
        self, principal: str, per_minute: int | None = None, name: str = "requests_per_minute"
    ) -> dict[str, str]:
        """Count a request that opens no stream (e.g. a session login) against `per_minute`, the limit called
        `name` in the config (by default the request limit); returns the X-RateLimit headers."""
        rpm = self._settings.requests_per_minute if per_minute is None else per_minute
        if not rpm:
            return {}
        try:
            decision = await self._backend.hit(principal, rpm, WINDOW_SECONDS)
        except BackendUnavailable as exc:
            decision = await (await self._degraded(exc)).hit(principal, rpm, WINDOW_SECONDS)
        headers = _headers(decision)
        if not decision.allowed:
            raise _refused(principal, name, decision.limit, decision.reset_after, headers)
        return headers

    async def admit(
        self, principal: str, stream_id: str, token_estimate: int, overrides: KeyLimitSettings | None = None
    ) -> Admission:
        """Everything a stream needs, in one atomic decision: all of it, or nothing taken."""
        limits = self._settings if overrides is None else self._with(overrides)
        budget = limits.tokens_per_minute
        ask = Ask(
            requests=limits.requests_per_minute,
            streams=limits.concurrent_streams,
            lease_ttl=limits.lease_ttl_seconds,
            tokens=min(token_estimate, budget),
            token_budget=budget,
            window=WINDOW_SECONDS,
        )
        if not (ask.requests or ask.streams or ask.token_budget):
            return Admission(self, principal, None, (0, 0), {}, stream_id=stream_id, local=False)
        local = False
        try:
            verdict = await self._backend.admit(principal, stream_id, ask)
        except asyncio.CancelledError:
            if ask.streams:  # the client left while the store decided: its yes may still come
                self._orphans[(principal, stream_id)] = time.monotonic()
            raise
        except BackendUnavailable as exc:
            if ask.streams and exc.maybe_done:
                # The lost answer may have been a yes; the command has reached the store: release it at once.
                self._orphans[(principal, stream_id)] = time.monotonic() - ORPHAN_SETTLES_SECONDS
            verdict = await (await self._degraded(exc)).admit(principal, stream_id, ask)
            local = True
        if verdict.refused_by is not None:
            raise self._refusal(principal, ask, verdict.refused_by, verdict.reset_after)
        lease = stream_id if ask.streams else None
        if lease is not None:
            self._leases.add((principal, lease))
        headers = _headers(Decision(True, ask.requests, verdict.remaining, verdict.reset_after)) if ask.requests else {}
        return Admission(self, principal, lease, (ask.tokens, budget), headers, stream_id=stream_id, local=local)

    def _with(self, overrides: KeyLimitSettings) -> LimitSettings:
        """The limits with a key's own overrides, made once per key (a pydantic copy per request was 2 % of it)."""
        limits = self._per_key.get(overrides)
        if limits is None:
            chosen = {k: v for k, v in overrides.model_dump().items() if v is not None}
            limits = self._per_key[overrides] = self._settings.model_copy(update=chosen)
        return limits

    def _refusal(self, principal: str, ask: Ask, limit: LimitName, reset_after: float) -> RateLimited:
        if limit == "concurrent_streams":
            # A lease's expiry says when a crashed process's stream stops counting, not when a live one
            # ends: the wait is estimated from how long streams last instead.
            wait = self.expected_wait(ask.streams)
            return _refused(principal, limit, ask.streams, wait, _headers(Decision(False, ask.streams, 0, wait)))
        value = ask.requests if limit == "requests_per_minute" else ask.token_budget
        return _refused(principal, limit, value, reset_after, _headers(Decision(False, value, 0, reset_after)))

    async def _degraded(self, exc: BackendUnavailable) -> MemoryBackend:
        """The store failed a decision: refuse (fail_closed), or return the fallback that decides instead."""
        if self._settings.on_backend_failure == "fail_closed":
            logger.warning("rate-limit store unavailable, refusing (fail_closed): %s", exc)
            raise LimitsUnavailable("rate limiting is unavailable; try again shortly", retry_after=1) from exc
        self.fallback_decisions += 1
        logger.warning("rate-limit store unavailable, deciding locally (fail_open): %s", exc)
        if self._fallback is None:
            self._fallback = MemoryBackend()
            # The streams this process has open still count while it decides alone.
            await self._fallback.assert_leases(self._leases, self._settings.lease_ttl_seconds)
        return self._fallback

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

    async def give_back(
        self,
        principal: str,
        stream_id: str,
        lease: str | None,
        reserved: tuple[int, int],
        used_tokens: int,
        *,
        local: bool,
    ) -> None:
        # Giving back never fails a stream: a lease the store did not hear about expires by its TTL, and a lost
        # settlement only leaves the reservation standing until its window passes.
        amount, budget = reserved
        recorded = self._registry is not None and self._registry.discard(stream_id)
        if lease is not None:
            self._leases.discard((principal, lease))
        if self._fallback is not None:
            local_amount = amount if local else 0  # a reservation lives where it was made
            await self._fallback.finish(
                principal, lease, reserved=local_amount, actual=used_tokens, limit=budget, window=WINDOW_SECONDS
            )
        shared_amount = 0 if local else amount
        if lease is None and not shared_amount and not recorded:
            return
        try:
            await self._backend.finish(
                principal,
                lease,
                reserved=shared_amount,
                actual=used_tokens,
                limit=budget,
                window=WINDOW_SECONDS,
                stream=stream_id if recorded else None,
            )
        except BackendUnavailable as exc:
            logger.warning("rate-limit store unavailable while giving back: %s", exc)

    async def _renew_leases(self) -> None:
        """The heartbeat, every ttl / 3 (at most `HEARTBEAT_SECONDS`). Supervised: no failure ends it; each is
        logged and it beats again."""
        interval = min(HEARTBEAT_SECONDS, self._settings.lease_ttl_seconds / 3)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.beat()
            except Exception:
                logger.exception("lease heartbeat failed; it beats again in %.1f s", interval)

    async def _announce(self, registry: StreamRegistry) -> None:
        """Write the records of new streams, in one round trip for all those opened within `ANNOUNCE_SECONDS`.
        Supervised like the heartbeat, which writes them anyway if this fails."""
        while True:
            await self._opened.wait()
            await asyncio.sleep(ANNOUNCE_SECONDS)
            self._opened.clear()
            records: list[tuple[str, bytes]] = []
            try:
                records = registry.fresh_records()
                if records:
                    await self._backend.assert_leases((), self._settings.lease_ttl_seconds, records)
            except Exception as exc:
                logger.warning("could not write new streams' records (the heartbeat will): %s", exc)
            finally:
                # A stream that ended while its record was on its way (even one whose write timed out but went
                # in): take the record out again.
                if gone := [stream_id for stream_id, _ in records if not registry.local(stream_id)]:
                    with contextlib.suppress(Exception):
                        await self._backend.release_all(set(), gone)

    async def beat(self) -> None:
        """Assert again every lease this process holds, in one round trip (which also puts back leases a
        restarted store lost), and release what ended or was orphaned meanwhile. With no lease to assert during
        an outage, a ping tells whether the store is back."""
        ttl = self._settings.lease_ttl_seconds
        held = list(self._leases)
        records = await self._registry.records() if self._registry is not None else []
        try:
            if held or records:
                replica = self._registry.replica if self._registry is not None else None
                for stream_id, reason in await self._backend.assert_leases(held, ttl, records, replica):
                    self._on_cancel(stream_id, reason)
            elif self._fallback is not None:
                await self._backend.ping()
        except BackendUnavailable:
            if self._fallback is not None:
                # Not a stream that ended while the store kept us waiting: it would count for a whole TTL.
                await self._fallback.assert_leases([lease for lease in held if lease in self._leases], ttl)
            return  # the leases come back with the first beat after the store does
        if self._fallback is not None:
            logger.warning("rate-limit store answers again; limits are shared again")
            self._fallback = None
        # A stream that ended while the beat was in flight may have had its lease put back: take it out again.
        ended = set(held) - self._leases
        now = time.monotonic()
        # An orphan younger than the store's time-out may still be on its way there: the next beat takes it.
        settled = {lease: at for lease, at in self._orphans.items() if now - at >= ORPHAN_SETTLES_SECONDS}
        orphans = {lease for lease, at in settled.items() if now - at < ttl and lease not in self._leases}
        for lease in settled:
            del self._orphans[lease]
        # Likewise a record written again after its stream's `finish` removed it.
        gone = [
            stream_id for stream_id, _ in records if self._registry is not None and not self._registry.local(stream_id)
        ]
        if ended or orphans or gone:
            try:
                await self._backend.release_all(ended | orphans, gone)
            except BackendUnavailable as exc:
                logger.warning("rate-limit store unavailable while releasing: %s", exc)  # they expire by TTL


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
