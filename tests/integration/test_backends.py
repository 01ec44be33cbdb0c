"""One contract, two backends: the in-process one and Redis (a real redis-server), decision for decision."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest

from app.backends.base import Backend, BackendUnavailable
from app.backends.memory import MemoryBackend
from app.backends.redis import RedisBackend
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["memory", "redis"])
async def backend(request: pytest.FixtureRequest, redis_server: RedisServer) -> AsyncIterator[Backend]:
    store: Backend
    if request.param == "memory":
        store = MemoryBackend()
    else:
        store = RedisBackend(redis_server.url, key_prefix=f"test-{uuid.uuid4().hex}:")
    await store.open()
    yield store
    await store.aclose()


async def test_a_burst_admits_exactly_the_limit(backend: Backend) -> None:
    decisions = await asyncio.gather(*(backend.hit("ip:1", 50, 60) for _ in range(200)))
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 50
    assert sorted(d.remaining for d in allowed) == list(range(50))
    denied = [d for d in decisions if not d.allowed]
    assert all(d.remaining == 0 and 0 < d.reset_after <= 60 for d in denied)


async def test_keys_are_independent(backend: Backend) -> None:
    assert (await backend.hit("a", 1, 60)).allowed
    assert not (await backend.hit("a", 1, 60)).allowed
    assert (await backend.hit("b", 1, 60)).allowed


async def test_the_window_slides(backend: Backend) -> None:
    assert (await backend.hit("k", 2, 0.2)).allowed
    assert (await backend.hit("k", 2, 0.2)).allowed
    refused = await backend.hit("k", 2, 0.2)
    assert not refused.allowed
    assert 0 < refused.reset_after <= 0.11
    await asyncio.sleep(refused.reset_after + 0.01)  # the passing of time is what is under test
    assert (await backend.hit("k", 2, 0.2)).allowed


async def test_leases_count_open_streams(backend: Backend) -> None:
    assert (await backend.acquire("p", "s1", 2, 30)).allowed
    second = await backend.acquire("p", "s2", 2, 30)
    assert (second.allowed, second.remaining) == (True, 0)
    assert not (await backend.acquire("p", "s3", 2, 30)).allowed
    assert (await backend.acquire("p", "s2", 2, 30)).allowed, "re-acquiring a held lease is not a new one"
    await backend.release("p", "s1")
    await backend.release("p", "s1")  # releasing twice is harmless
    assert (await backend.acquire("p", "s3", 2, 30)).allowed
    assert not (await backend.acquire("p", "s4", 2, 30)).allowed


async def test_a_lease_not_renewed_expires(backend: Backend) -> None:
    """A worker that dies holds its leases only until their TTL."""
    assert (await backend.acquire("p", "dead-worker", 1, 0.2)).allowed
    refused = await backend.acquire("p", "other", 1, 0.2)
    assert not refused.allowed
    assert 0 < refused.reset_after <= 0.2
    await asyncio.sleep(0.25)
    assert (await backend.acquire("p", "other", 1, 0.2)).allowed


async def test_renewal_keeps_a_lease(backend: Backend) -> None:
    """Held past its first TTL only because it was asserted again (margins of 0.3 s either side)."""
    assert (await backend.acquire("p", "live", 1, 0.6)).allowed
    await asyncio.sleep(0.3)
    await backend.assert_leases([("p", "live")], 0.6)
    await asyncio.sleep(0.45)  # past the first TTL (0.6 s), well inside the renewed one (0.9 s)
    assert not (await backend.acquire("p", "other", 1, 0.6)).allowed


async def test_asserting_puts_back_leases_the_store_lost(backend: Backend) -> None:
    """After a restart the store knows no lease; the heartbeat's assertion restores every one, on every principal."""
    await backend.assert_leases([("p", "a"), ("p", "b"), ("q", "c")], 30)
    assert not (await backend.acquire("p", "new", 2, 30)).allowed
    assert not (await backend.acquire("q", "new", 1, 30)).allowed
    assert (await backend.acquire("q", "new", 2, 30)).allowed


async def test_token_budget_reserve_and_settle(backend: Backend) -> None:
    first = await backend.reserve("tpm", 600, 1000, 60)
    assert (first.allowed, first.remaining) == (True, 400)
    assert not (await backend.reserve("tpm", 600, 1000, 60)).allowed
    await backend.settle("tpm", reserved=600, actual=100, limit=1000, window=60)  # it used less: refund
    assert (await backend.reserve("tpm", 600, 1000, 60)).allowed
    await backend.settle("tpm", reserved=600, actual=900, limit=1000, window=60)  # it used more: charge
    assert not (await backend.reserve("tpm", 100, 1000, 60)).allowed


async def test_unreachable_redis_fails_fast() -> None:
    store = RedisBackend("redis://127.0.0.1:9/0", timeout=0.3)
    await store.open()
    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        await store.hit("k", 1, 60)
    assert time.monotonic() - started < 2
    await store.aclose()
