"""One contract, two backends: the in-process one and Redis (a real redis-server), decision for decision."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from app.backends.base import Ask, Backend, BackendUnavailable, Verdict
from app.backends.memory import MemoryBackend
from app.backends.redis import RedisBackend
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Store:
    backend: Backend
    advance: Callable[[float], Awaitable[None]]  # let `seconds` pass on the store's own clock


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Store]:
    backend: Backend
    if request.param == "memory":
        clock = FakeClock()
        backend = MemoryBackend(clock)

        async def advance(seconds: float) -> None:
            clock.now += seconds

    else:
        backend = RedisBackend(redis_server.url, key_prefix=f"test-{uuid.uuid4().hex}:")

        async def advance(seconds: float) -> None:
            await asyncio.sleep(seconds)  # Redis decides by its own clock: the passing of time is under test

    await backend.open()
    yield Store(backend, advance)
    await backend.aclose()


async def lease(backend: Backend, key: str, stream: str, most: int, ttl: float = 30) -> Verdict:
    return await backend.admit(key, stream, Ask(streams=most, lease_ttl=ttl))


async def test_a_burst_admits_exactly_the_limit(store: Store) -> None:
    decisions = await asyncio.gather(*(store.backend.hit("ip:1", 50, 60) for _ in range(200)))
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 50
    assert sorted(d.remaining for d in allowed) == list(range(50))
    denied = [d for d in decisions if not d.allowed]
    assert all(d.remaining == 0 and 0 < d.reset_after <= 60 for d in denied)


async def test_a_burst_of_admissions_admits_exactly_the_request_limit(store: Store) -> None:
    ask = Ask(requests=50)
    verdicts = await asyncio.gather(*(store.backend.admit("ip:1", f"s{i}", ask) for i in range(200)))
    admitted = [v for v in verdicts if v.refused_by is None]
    assert len(admitted) == 50
    assert sorted(v.remaining for v in admitted) == list(range(50))
    assert {v.refused_by for v in verdicts if v.refused_by} == {"requests_per_minute"}


async def test_keys_are_independent(store: Store) -> None:
    assert (await store.backend.hit("a", 1, 60)).allowed
    assert not (await store.backend.hit("a", 1, 60)).allowed
    assert (await store.backend.hit("b", 1, 60)).allowed


async def test_the_window_slides(store: Store) -> None:
    assert (await store.backend.hit("k", 2, 0.2)).allowed
    assert (await store.backend.hit("k", 2, 0.2)).allowed
    refused = await store.backend.hit("k", 2, 0.2)
    assert not refused.allowed
    assert 0 < refused.reset_after <= 0.11
    await store.advance(refused.reset_after + 0.01)
    assert (await store.backend.hit("k", 2, 0.2)).allowed


async def test_leases_count_open_streams(store: Store) -> None:
    backend = store.backend
    assert (await lease(backend, "p", "s1", 2)).refused_by is None
    assert (await lease(backend, "p", "s2", 2)).refused_by is None
    assert (await lease(backend, "p", "s3", 2)).refused_by == "concurrent_streams"
    assert (await lease(backend, "p", "s2", 2)).refused_by is None, "re-acquiring a held lease is not a new one"
    await backend.release_all([("p", "s1")])
    await backend.release_all([("p", "s1")])  # releasing twice is harmless
    assert (await lease(backend, "p", "s3", 2)).refused_by is None
    assert (await lease(backend, "p", "s4", 2)).refused_by == "concurrent_streams"


async def test_a_lease_not_renewed_expires(store: Store) -> None:
    """A worker that dies holds its leases only until their TTL."""
    assert (await lease(store.backend, "p", "dead-worker", 1, 0.2)).refused_by is None
    refused = await lease(store.backend, "p", "other", 1, 0.2)
    assert refused.refused_by == "concurrent_streams"
    assert 0 < refused.reset_after <= 0.2 + 1e-9
    await store.advance(0.25)
    assert (await lease(store.backend, "p", "other", 1, 0.2)).refused_by is None


async def test_an_expired_lease_is_swept_while_a_live_one_keeps_the_key(store: Store) -> None:
    """One principal, one dead lease and one live one: the dead one stops counting though the key lives on."""
    assert (await lease(store.backend, "p", "dead", 2, 1.0)).refused_by is None
    assert (await lease(store.backend, "p", "live", 2, 30)).refused_by is None
    assert (await lease(store.backend, "p", "new", 2, 30)).refused_by == "concurrent_streams"
    await store.advance(1.1)
    assert (await lease(store.backend, "p", "new", 2, 30)).refused_by is None
    assert (await lease(store.backend, "p", "newer", 2, 30)).refused_by == "concurrent_streams"


async def test_renewal_keeps_a_lease(store: Store) -> None:
    """Held past its first TTL only because it was asserted again (0.7 s of margin either side)."""
    assert (await lease(store.backend, "p", "live", 1, 2.0)).refused_by is None
    await store.advance(1.0)
    await store.backend.assert_leases([("p", "live")], 2.0)
    await store.advance(1.3)  # past the first TTL (2 s), well inside the renewed one (3 s)
    assert (await lease(store.backend, "p", "other", 1, 2.0)).refused_by == "concurrent_streams"


async def test_asserting_puts_back_leases_the_store_lost(store: Store) -> None:
    """After a restart the store knows no lease; the heartbeat's assertion restores every one, on every principal."""
    await store.backend.assert_leases([("p", "a"), ("p", "b"), ("q", "c")], 30)
    assert (await lease(store.backend, "p", "new", 2)).refused_by == "concurrent_streams"
    assert (await lease(store.backend, "q", "new", 1)).refused_by == "concurrent_streams"
    assert (await lease(store.backend, "q", "new", 2)).refused_by is None


async def test_token_budget_reserve_and_settle(store: Store) -> None:
    backend = store.backend
    first = await backend.admit("tpm", "s1", Ask(tokens=600, token_budget=1000))
    assert first.refused_by is None
    assert (await backend.admit("tpm", "s2", Ask(tokens=600, token_budget=1000))).refused_by == "tokens_per_minute"
    await backend.finish("tpm", None, reserved=600, actual=100, limit=1000, window=60)  # it used less: refund
    assert (await backend.admit("tpm", "s3", Ask(tokens=600, token_budget=1000))).refused_by is None
    await backend.finish("tpm", None, reserved=600, actual=900, limit=1000, window=60)  # it used more: charge
    assert (await backend.admit("tpm", "s4", Ask(tokens=100, token_budget=1000))).refused_by == "tokens_per_minute"


async def test_requests_and_tokens_are_separate_budgets(store: Store) -> None:
    """A request limit of 2 is not drawn down by reserving tokens under the same key."""
    ask = Ask(requests=2, tokens=500, token_budget=100_000)
    assert (await store.backend.admit("p", "s1", ask)).refused_by is None
    assert (await store.backend.admit("p", "s2", ask)).refused_by is None
    assert (await store.backend.admit("p", "s3", ask)).refused_by == "requests_per_minute"


async def test_admission_is_all_or_nothing(store: Store) -> None:
    """Refused by the token budget, an admission takes neither a lease nor a request."""
    backend = store.backend
    greedy = Ask(requests=2, streams=1, tokens=2000, token_budget=1000)
    refused = await backend.admit("p", "s1", greedy)
    assert refused.refused_by == "tokens_per_minute"
    modest = Ask(requests=2, streams=1, tokens=10, token_budget=1000)
    admitted = await backend.admit("p", "s2", modest)
    assert (admitted.refused_by, admitted.remaining) == (None, 1), "the refused admission counted a request"
    await backend.release_all([("p", "s2")])
    assert (await backend.admit("p", "s3", modest)).refused_by is None, "the refused admission held a lease"
    refused_by_streams = await backend.admit("p", "s4", modest)
    assert refused_by_streams.refused_by in ("concurrent_streams", "requests_per_minute")


async def test_a_refused_lease_takes_no_tokens(store: Store) -> None:
    backend = store.backend
    assert (await backend.admit("p", "s1", Ask(streams=1, tokens=600, token_budget=1000))).refused_by is None
    assert (await backend.admit("p", "s2", Ask(streams=1, tokens=600, token_budget=1000))).refused_by == (
        "concurrent_streams"
    )
    await backend.finish("p", "s1", reserved=600, actual=600, limit=1000, window=60)
    # Had the refused admission reserved its 600, these 400 would not fit.
    assert (await backend.admit("p", "s3", Ask(streams=1, tokens=400, token_budget=1000))).refused_by is None


async def test_the_memory_store_forgets_what_has_recovered() -> None:
    """10,000 clients that came once leave nothing behind once their budgets are full again."""
    clock = FakeClock()
    backend = MemoryBackend(clock)
    for i in range(10_000):
        await backend.admit(f"ip:{i}", f"s{i}", Ask(requests=60, streams=4, lease_ttl=30, tokens=10, token_budget=1000))
    assert backend.entries == 30_000
    clock.now += 61
    await backend.hit("ip:new", 60, 60)
    assert backend.entries == 1


async def test_unreachable_redis_fails_fast() -> None:
    store = RedisBackend("redis://127.0.0.1:9/0", timeout=0.3)
    await store.open()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await store.hit("k", 1, 60)
    assert time.monotonic() - started < 2
    await store.aclose()


async def test_finish_releases_the_lease_and_settles_in_one_call(store: Store) -> None:
    backend = store.backend
    ask = Ask(streams=1, tokens=900, token_budget=1000)
    assert (await backend.admit("p", "s1", ask)).refused_by is None
    assert (await backend.admit("p", "s2", ask)).refused_by == "concurrent_streams"
    await backend.finish("p", "s1", reserved=900, actual=100, limit=1000, window=60)
    # The lease is free, and the 800 tokens not used are back: 900 fit again.
    assert (await backend.admit("p", "s2", ask)).refused_by is None


async def test_admissions_after_the_scripts_were_flushed_run_once_each(redis_server: RedisServer) -> None:
    """A restarted (or flushed) Redis has no scripts: a batch that meets NOSCRIPT loads it and sends again only
    what did not run, so each admission counts once."""
    backend = RedisBackend(redis_server.url, key_prefix=f"flush-{uuid.uuid4().hex}:")
    await backend.open()
    try:
        await backend.admit("p", "warm", Ask(requests=10))
        await backend.client.script_flush()
        verdicts = await asyncio.gather(*(backend.admit("p", f"s{i}", Ask(requests=10)) for i in range(3)))
        assert sorted(v.remaining for v in verdicts) == [6, 7, 8]
        assert (await backend.admit("p", "s4", Ask(requests=10))).remaining == 5
    finally:
        await backend.aclose()


async def test_registry_records_are_written_by_the_heartbeat_and_removed_by_finish(store: Store) -> None:
    backend = store.backend
    assert await backend.streams(None, 10) == ([], None)
    records = [(f"s{i}", f'{{"id":"s{i}"}}'.encode()) for i in range(5)]
    await backend.assert_leases([], 30, records)
    assert await backend.stream("s3") == b'{"id":"s3"}'
    page, cursor = await backend.streams(None, 2)
    assert (page, cursor) == ([b'{"id":"s0"}', b'{"id":"s1"}'], "s1")
    rest, end = await backend.streams(cursor, 10)
    assert (len(rest), end) == (3, None)
    await backend.finish("ip:1", None, reserved=0, actual=0, limit=0, window=60, stream="s3")
    await backend.release_all([], ["s4"])
    assert await backend.stream("s3") is None
    assert [r for r in (await backend.streams(None, 10))[0]] == [b'{"id":"s0"}', b'{"id":"s1"}', b'{"id":"s2"}']


async def test_registry_records_expire_with_their_ttl_unless_a_beat_renews_them(store: Store) -> None:
    backend = store.backend
    # Margins of 0.2 s either side of each expiry: a loaded machine delays Redis's replies, not its clock.
    await backend.assert_leases([], 0.6, [("kept", b"k"), ("dropped", b"d")])
    await store.advance(0.4)
    await backend.assert_leases([], 0.6, [("kept", b"k")])  # only the live one is beaten again
    await store.advance(0.4)
    assert await backend.stream("dropped") is None
    assert await backend.stream("kept") == b"k"
    assert (await backend.streams(None, 10))[0] == [b"k"]  # a reader drops the expired id from the index


async def test_a_cancel_reaches_its_replicas_next_beat_once_and_no_other(redis_server: RedisServer) -> None:
    """The heartbeat's fallback for a lost pub/sub message: one command per beat reads every cancel asked of its
    replica, whatever the number of streams it runs (it was one read per stream per beat)."""
    prefix = f"test-{uuid.uuid4().hex}:"
    backend = RedisBackend(redis_server.url, key_prefix=prefix, cancel_messages=False)
    await backend.open()
    try:
        records = [(f"s{i}", b"{}") for i in range(3)]
        await backend.request_cancel("s1", "replica-a", "admin")
        await backend.request_cancel("s2", "replica-a", "client")
        await backend.request_cancel("t9", "replica-b", "admin")
        assert await backend.assert_leases([], 30, records, "replica-b") == [("t9", "admin")]
        assert sorted(await backend.assert_leases([], 30, records, "replica-a")) == [("s1", "admin"), ("s2", "client")]
        assert await backend.assert_leases([], 30, records, "replica-a") == []  # delivered once
        await backend.request_cancel("s0", "replica-a", "admin")
        # A beat whose answer never arrived (here: a new process knows nothing of it) loses no cancel.
        await backend.assert_leases([], 30, records, "replica-a")
        again = RedisBackend(redis_server.url, key_prefix=prefix, cancel_messages=False)
        try:
            assert await again.assert_leases([], 30, records, "replica-a") == [("s0", "admin")]
        finally:
            await again.aclose()
    finally:
        await backend.aclose()
