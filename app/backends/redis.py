"""The Redis backend: every decision is one Lua script, run atomically by Redis with Redis's own clock.

Works with Redis, Valkey and managed Redis (6.2+). Keys live under `key_prefix`; every key has a TTL, so nothing
outlives its use. Connection problems raise `BackendUnavailable` quickly (short socket timeouts), so the limiter
can apply its fail-open or fail-closed policy instead of hanging a request.

A restarted Redis (or a failover, or a NAT that forgot the connection) leaves every pooled connection dead, and
often nothing on the connection says so until a command is written to it. A command that fails with a connection
error is therefore sent once more on a fresh connection (redis-py's `Retry`), so the first decision after Redis is
back is already exact; time-outs are not retried, since the first attempt may have run.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from app.backends.base import BackendUnavailable, Decision

# GCRA with integer microseconds from Redis TIME. KEYS[1]; ARGV: cost, limit, window_us. Returns allowed,
# remaining, reset_us (as text: Lua numbers are doubles and Redis would truncate them).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost, limit, window = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local emission = window / limit
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local new_tat = tat + cost * emission
local allowed_at = new_tat - window
if allowed_at > now then
  return {0, 0, tostring(allowed_at - now)}
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return {1, math.floor((now - allowed_at) / emission), tostring(new_tat - now)}
"""

# KEYS[1]; ARGV: reserved, actual, limit, window_us.
_SETTLE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local delta = (tonumber(ARGV[2]) - tonumber(ARGV[1])) * tonumber(ARGV[4]) / tonumber(ARGV[3])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if delta > 0 and tat < now then tat = now end
local new_tat = tat + delta
if new_tat <= now then
  redis.call('DEL', KEYS[1])
  return 0
end
redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 1
"""

# Leases: a sorted set of lease ids scored by expiry (ms). KEYS[1]; ARGV: lease, limit, ttl_ms.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local held = redis.call('ZSCORE', KEYS[1], ARGV[1])
local count = redis.call('ZCARD', KEYS[1])
local limit, ttl = tonumber(ARGV[2]), tonumber(ARGV[3])
if not held and count >= limit then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, 0, tostring(tonumber(first[2]) - now)}
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], tonumber(last[2]) - now + 1)
if not held then count = count + 1 end
return {1, limit - count, tostring(ttl)}
"""

# Re-assert leases this process holds, re-adding any that Redis lost (a restart, an eviction).
# KEYS[1]; ARGV: ttl_ms, lease...
_ASSERT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], expiry, ARGV[i])
end
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], tonumber(last[2]) - now + 1)
return 1
"""


class RedisBackend:
    def __init__(
        self, url: str, *, key_prefix: str = "tokenrelay:", timeout: float = 0.5, max_connections: int = 64
    ) -> None:
        self._url = url
        self._prefix = key_prefix
        self._timeout = timeout
        self._max_connections = max_connections
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}

    @property
    def client(self) -> aioredis.Redis:
        """The pooled client (also serving the session store), created on first use; it connects lazily."""
        if self._redis is None:
            # A blocking pool: a burst of requests queues briefly for a connection instead of failing.
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url,
                max_connections=self._max_connections,
                timeout=self._timeout,
                socket_timeout=self._timeout,
                socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
                retry_on_error=[RedisConnectionError],
            )
            self._redis = aioredis.Redis(connection_pool=pool)
            for name, source in (("gcra", _GCRA), ("settle", _SETTLE), ("acquire", _ACQUIRE), ("assert", _ASSERT)):
                self._scripts[name] = self._redis.register_script(source)
        return self._redis

    async def open(self) -> None:
        self._client()

    async def ping(self) -> None:
        """Raise `BackendUnavailable` unless Redis answers now (the startup check)."""
        try:
            await self._client().ping()
        except RedisError as exc:
            raise BackendUnavailable(f"Redis at {redacted_url(self._url)}: {exc}") from exc

    async def aclose(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            await self._redis.connection_pool.disconnect()
            self._redis = None

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        return await self._gcra(f"{self._prefix}req:{key}", 1, limit, window)

    async def reserve(self, key: str, amount: int, limit: int, window: float) -> Decision:
        return await self._gcra(f"{self._prefix}tok:{key}", amount, limit, window)

    async def settle(self, key: str, reserved: int, actual: int, limit: int, window: float) -> None:
        args = [reserved, actual, limit, int(window * 1_000_000)]
        await self._run("settle", f"{self._prefix}tok:{key}", args)

    async def _gcra(self, key: str, cost: int, limit: int, window: float) -> Decision:
        allowed, remaining, reset_us = await self._run("gcra", key, [cost, limit, int(window * 1_000_000)])
        return Decision(bool(allowed), limit, min(int(remaining), limit), float(reset_us) / 1_000_000)

    async def acquire(self, key: str, lease: str, limit: int, ttl: float) -> Decision:
        allowed, remaining, reset_ms = await self._run(
            "acquire", f"{self._prefix}conc:{key}", [lease, limit, max(1, int(ttl * 1000))]
        )
        return Decision(bool(allowed), limit, int(remaining), float(reset_ms) / 1000)

    async def assert_leases(self, leases: Iterable[tuple[str, str]], ttl: float) -> None:
        by_key: dict[str, list[str]] = {}
        for key, lease in leases:
            by_key.setdefault(key, []).append(lease)
        if not by_key:
            return
        pipe = self._client().pipeline(transaction=False)
        ttl_ms = max(1, int(ttl * 1000))
        for key, held in by_key.items():  # one call per principal, all of them in one round trip
            await self._scripts["assert"](keys=[f"{self._prefix}conc:{key}"], args=[ttl_ms, *held], client=pipe)
        try:
            await pipe.execute()
        except RedisError as exc:
            raise BackendUnavailable(f"Redis: {exc}") from exc

    async def release(self, key: str, lease: str) -> None:
        redis = self._client()
        try:
            await redis.zrem(f"{self._prefix}conc:{key}", lease)
        except RedisError as exc:
            raise BackendUnavailable(f"Redis: {exc}") from exc

    async def _run(self, script: str, key: str, args: list[Any]) -> Any:
        self._client()
        try:
            return await self._scripts[script](keys=[key], args=args)
        except RedisError as exc:
            raise BackendUnavailable(f"Redis: {exc}") from exc

    def _client(self) -> aioredis.Redis:
        return self.client


def redacted_url(url: str) -> str:
    """`url` without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))
