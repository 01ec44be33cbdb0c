"""The limiter against a real redis-server that fails: admission is all or nothing, and the in-process fallback
exists only while Redis fails."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable

import pytest
from redis import asyncio as aioredis

from app.backends.memory import MemoryBackend
from app.backends.redis import RedisBackend
from app.errors import LimitsUnavailable, RateLimited
from app.limits import Limiter
from app.settings import LimitSettings
from tests.support.logs import RecordCollector
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio


@pytest.fixture
async def own_redis() -> AsyncIterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


async def opened(settings: LimitSettings, url: str, prefix: str) -> Limiter:
    limiter = Limiter(settings, RedisBackend(url, key_prefix=prefix, timeout=0.3))
    await limiter.open()
    return limiter


async def test_a_store_failure_at_the_token_step_leaves_no_lease(redis_server: RedisServer) -> None:
    """The token budget's key is unreadable (a failure after the lease step): fail_closed answers 503 and takes
    nothing, so the principal is not locked out by a lease that nobody holds."""
    prefix = f"aon-{uuid.uuid4().hex}:"
    settings = LimitSettings(
        requests_per_minute=0, concurrent_streams=1, tokens_per_minute=10_000, on_backend_failure="fail_closed"
    )
    limiter = await opened(settings, redis_server.url, prefix)
    redis = aioredis.Redis.from_url(redis_server.url)
    try:
        await redis.rpush(f"{prefix}{{key:k}}:tok", "not a budget")  # every command on it fails: WRONGTYPE
        with pytest.raises(LimitsUnavailable):
            await limiter.admit("key:k", "s1", 100)
        assert await redis.zcard(f"{prefix}{{key:k}}:conc") == 0
        await redis.delete(f"{prefix}{{key:k}}:tok")
        admission = await limiter.admit("key:k", "s2", 100)
        await admission.close(10)
        await limiter.beat()
        assert await redis.zcard(f"{prefix}{{key:k}}:conc") == 0
    finally:
        await redis.aclose()
        await limiter.aclose()


async def test_the_fallback_holds_nothing_while_redis_answers(redis_server: RedisServer) -> None:
    settings = LimitSettings(requests_per_minute=1000, concurrent_streams=4, tokens_per_minute=100_000)
    limiter = await opened(settings, redis_server.url, f"fb-{uuid.uuid4().hex}:")
    try:
        for i in range(300):
            admission = await limiter.admit(f"ip:10.0.{i // 250}.{i % 250}", f"s{i}", 50)
            await admission.close(20)
        assert limiter.local_entries == 0
        assert limiter.fallback_decisions == 0
    finally:
        await limiter.aclose()


async def test_the_fallback_counts_open_streams_during_an_outage_and_is_dropped_after_it(
    own_redis: RedisServer,
) -> None:
    settings = LimitSettings(requests_per_minute=0, concurrent_streams=2, on_backend_failure="fail_open")
    limiter = await opened(settings, own_redis.url, "out:")
    try:
        held = [await limiter.admit("ip:1", f"s{i}", 0) for i in range(2)]  # decided by Redis
        own_redis.stop()
        with pytest.raises(RateLimited):
            await limiter.admit("ip:1", "s3", 0)  # decided locally, knowing this process's two open streams
        assert limiter.fallback_decisions == 1
        other = await limiter.admit("ip:2", "s4", 0)
        assert limiter.local_entries == 2  # the leases of ip:1 and of ip:2
        await limiter.beat()  # Redis still down: the fallback stays
        assert limiter.local_entries == 2
        own_redis.start()
        await limiter.beat()  # Redis answers: every open stream is asserted there, the fallback is gone
        assert limiter.local_entries == 0
        with pytest.raises(RateLimited):
            await limiter.admit("ip:1", "s5", 0)  # Redis knows the two streams it lost in the restart
        for admission in [*held, other]:
            await admission.close(0)
        assert (await limiter.admit("ip:1", "s6", 0)).principal == "ip:1"
    finally:
        await limiter.aclose()


class FailingOnce(MemoryBackend):
    """A store whose first heartbeat fails with an error that is not "unavailable" (a bug, a protocol surprise)."""

    def __init__(self) -> None:
        super().__init__()
        self.beats = 0
        self.beaten = asyncio.Event()

    async def assert_leases(
        self,
        leases: Iterable[tuple[str, str]],
        ttl: float,
        records: Iterable[tuple[str, bytes]] = (),
        replica: str | None = None,
    ) -> list[tuple[str, str]]:
        self.beats += 1
        if self.beats == 1:
            raise RuntimeError("unexpected reply")
        flags = await super().assert_leases(leases, ttl, records, replica)
        if self.beats >= 2:
            self.beaten.set()
        return flags


async def test_the_heartbeat_survives_an_unexpected_failure(logs: RecordCollector) -> None:
    store = FailingOnce()
    limiter = Limiter(LimitSettings(concurrent_streams=1, lease_ttl_seconds=0.3), store)
    await limiter.open()
    try:
        admission = await limiter.admit("ip:1", "s1", 0)
        async with asyncio.timeout(5):
            await store.beaten.wait()  # it beat again after the failure, and renewed the lease
        assert logs.messages("lease heartbeat failed")
        with pytest.raises(RateLimited):
            await limiter.admit("ip:1", "s2", 0)
        await admission.close(0)
    finally:
        await limiter.aclose()


async def test_an_outage_with_no_open_stream_keeps_the_local_limits(own_redis: RedisServer) -> None:
    """With no lease to assert, a beat during the outage must not pass for the store's return and reset the
    fallback (a fresh request budget every beat)."""
    settings = LimitSettings(requests_per_minute=2, concurrent_streams=0, on_backend_failure="fail_open")
    limiter = await opened(settings, own_redis.url, "quiet:")
    try:
        own_redis.stop()
        admitted = 0
        for round_ in range(3):
            for i in range(3):
                try:
                    await (await limiter.admit("ip:1", f"s{round_}.{i}", 0)).close(0)
                    admitted += 1
                except RateLimited:
                    pass
            await limiter.beat()
        assert admitted == 2
    finally:
        await limiter.aclose()


class ReplyDropper:
    """A TCP relay to Redis that, while `dropping`, passes commands on and swallows their replies: an answer lost
    on its way back, after the command ran. `dropped` is set once a reply was swallowed."""

    def __init__(self, port: int) -> None:
        self._port = port
        self.dropping = False
        self.dropped = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._server is not None:
            self._server.close()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", self._port)
        for pump in (self._pump(client_reader, redis_writer, False), self._pump(redis_reader, client_writer, True)):
            task = asyncio.create_task(pump)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, replies: bool) -> None:
        try:
            while data := await reader.read(65536):
                if replies and self.dropping:
                    self.dropped.set()
                    continue
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def test_a_lease_taken_by_an_admission_whose_answer_was_lost_is_released(redis_server: RedisServer) -> None:
    """The admission runs in Redis, but its answer never comes back: the client times out with 503, yet the lease
    is taken. The next heartbeat gives it back instead of letting it lock the principal out for a TTL."""
    prefix = f"lost-{uuid.uuid4().hex}:"
    settings = LimitSettings(requests_per_minute=0, concurrent_streams=1, on_backend_failure="fail_closed")
    relay = ReplyDropper(redis_server.port)
    limiter = await opened(settings, await relay.start(), prefix)
    redis = aioredis.Redis.from_url(redis_server.url, socket_timeout=5)
    try:
        await (await limiter.admit("key:warm", "w", 0)).close(0)  # connected, and the admission script loaded
        relay.dropping = True
        with pytest.raises(LimitsUnavailable):
            await limiter.admit("key:k", "s1", 0)
        assert relay.dropped.is_set(), "Redis answered the admission (and the answer was lost)"
        relay.dropping = False
        assert await redis.zcard(f"{prefix}{{key:k}}:conc") == 1, "the lost admission did run"
        await limiter.beat()
        assert await redis.zcard(f"{prefix}{{key:k}}:conc") == 0
        await (await limiter.admit("key:k", "s2", 0)).close(0)
    finally:
        await redis.aclose()
        await limiter.aclose()
        await relay.aclose()
