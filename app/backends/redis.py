"""The Redis backend: every decision is one Lua script, run atomically by Redis with Redis's own clock.

Works with Redis, Valkey and managed Redis (6.2+). Keys live under `key_prefix`; every key has a TTL, so nothing
outlives its use. Connection problems raise `BackendUnavailable` quickly (short socket timeouts), so the limiter
can apply its fail-open or fail-closed policy instead of hanging a request.

A restarted Redis (or a failover, or a NAT that forgot the connection) leaves every pooled connection dead, and
often nothing on the connection says so until a command is written to it. A command that fails with a connection
error is therefore sent once more on a fresh connection, so the first decision after Redis is back is already
exact; time-outs are not retried, since the first attempt may have run.

The commands of every stream (admission, its end, the heartbeat) share one pipelined connection
(`app/backends/resp.py`); the rest (sessions, cancels, the admin API) use redis-py's pool, with its `Retry`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from redis import asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.backends.base import Ask, BackendUnavailable, Decision, LimitName, Verdict
from app.backends.coalesce import Coalescer
from app.backends.redis_scripts import ADMIT, ASSERT, GCRA, SETTLE
from app.backends.resp import RespConnection

logger = logging.getLogger("tokenrelay.redis")

CANCEL_KEEP_MS = 60_000  # longer than any heartbeat interval: the owner reads a cancel at least once
_REFUSALS: tuple[LimitName | None, ...] = (None, "requests_per_minute", "concurrent_streams", "tokens_per_minute")


class RedisBackend:
    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "tokenrelay:",
        timeout: float = 0.5,
        max_connections: int = 64,
        cancel_messages: bool = True,
    ) -> None:
        self._url = url
        self._prefix = key_prefix
        self._timeout = timeout
        self._max_connections = max_connections
        self._redis: aioredis.Redis | None = None
        self._scripts: dict[str, Any] = {}
        self._admissions: Coalescer[tuple[list[str], list[Any]], Any] = Coalescer(self._admit_batch)
        self._delivered: dict[str, list[bytes]] = {}  # per replica's cancels key: what its last beat delivered
        # Admission, a stream's end and the heartbeat: every caller pipelined on one connection.
        self._pipe = RespConnection(url, timeout=timeout)
        # False only in tests: cancels then reach their replica through the heartbeat alone.
        self.cancel_messages = cancel_messages

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
            for name, source in (("gcra", GCRA), ("admit", ADMIT), ("settle", SETTLE), ("assert", ASSERT)):
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
        await self._pipe.aclose()
        if self._redis is not None:
            await self._redis.aclose()
            await self._redis.connection_pool.disconnect()
            self._redis = None

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        allowed, remaining, reset_us = await self._run(
            "gcra", [self._key(key, "req")], [1, limit, int(window * 1_000_000)]
        )
        return Decision(bool(allowed), limit, min(int(remaining), limit), float(reset_us) / 1_000_000)

    async def admit(self, key: str, lease: str, ask: Ask) -> Verdict:
        keys = [self._key(key, "req"), self._key(key, "conc"), self._key(key, "tok")]
        args = [
            ask.requests,
            int(ask.window * 1_000_000),
            ask.streams,
            lease,
            max(1, int(ask.lease_ttl * 1000)),
            ask.tokens,
            ask.token_budget,
        ]
        refused, remaining, reset_us = await self._admissions((keys, args))
        return Verdict(_REFUSALS[int(refused)], int(remaining), float(reset_us) / 1_000_000)

    async def _admit_batch(self, batch: list[tuple[list[str], list[Any]]]) -> list[Any]:
        """One round trip for the admissions of a loop turn."""
        return await self._evalsha("admit", batch)

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
        prelude: list[tuple[Any, ...]] = []
        if lease is not None:
            prelude.append(("ZREM", self._key(key, "conc"), lease))
        if stream is not None:
            prelude += [("DEL", self._record_key(stream)), ("ZREM", self._index, stream)]
        calls = [([self._key(key, "tok")], [reserved, actual, limit, int(window * 1_000_000)])] if reserved else []
        if prelude or calls:
            for result in await self._evalsha("settle", calls, prelude=prelude):
                if isinstance(result, BackendUnavailable):
                    raise result

    async def assert_leases(
        self,
        leases: Iterable[tuple[str, str]],
        ttl: float,
        records: Iterable[tuple[str, bytes]] = (),
        replica: str | None = None,
    ) -> list[tuple[str, str]]:
        by_key: dict[str, list[str]] = {}
        for key, lease in leases:
            by_key.setdefault(key, []).append(lease)
        ttl_ms = max(1, int(ttl * 1000))
        # The registry's records expire with the leases: a replica that stops beating leaves neither behind.
        prelude: list[tuple[Any, ...]] = []
        for stream_id, record in records:
            prelude += [("SET", self._record_key(stream_id), record, "PX", ttl_ms), ("ZADD", self._index, 0, stream_id)]
        # The cancels asked of this replica are read in the same round trip, one command for all of them: the
        # fallback when a pub/sub message was lost. Those the last good beat delivered are removed first, so a
        # beat whose answer is lost delivers nothing less (a cancel heard twice stops nothing twice).
        cancels = self._cancels_key(replica) if replica is not None and prelude else None
        if cancels is not None:
            if delivered := self._delivered.get(cancels):
                prelude.append(("SREM", cancels, *delivered))
            prelude.append(("SMEMBERS", cancels))
        # One call per principal, all of them in one round trip.
        calls = [([self._key(key, "conc")], [ttl_ms, *held]) for key, held in by_key.items()]
        answers: list[Any] = []
        for result in (
            await self._evalsha("assert", calls, prelude=prelude, answers=answers) if calls or prelude else []
        ):
            if isinstance(result, BackendUnavailable):
                raise result
        if cancels is None or not isinstance(answers[-1], list):
            return []
        asked: list[bytes] = answers[-1]
        self._delivered[cancels] = asked
        return [_cancel(_text(entry)) for entry in asked]

    async def request_cancel(self, stream_id: str, replica: str, reason: str) -> None:
        """Ask `replica` to stop `stream_id`: a message on its channel, and an entry its next heartbeat takes."""
        pipe = self._client().pipeline(transaction=False)
        pipe.sadd(self._cancels_key(replica), f"{stream_id} {reason}")
        pipe.pexpire(self._cancels_key(replica), CANCEL_KEEP_MS)
        if self.cancel_messages:
            pipe.publish(self._channel(replica), f"{stream_id} {reason}")
        try:
            await pipe.execute()
        except RedisError as exc:
            raise _unavailable(exc) from exc

    async def hear_cancels(self, replica: str, on_cancel: Callable[[str, str], None]) -> None:
        """Run `on_cancel(stream_id, reason)` for each cancel sent to `replica`, until cancelled. A lost
        connection is retried; what is said meanwhile reaches the replica through the heartbeat."""
        while True:
            pubsub = self._client().pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel(replica))
                async for message in pubsub.listen():
                    on_cancel(*_cancel(_text(message["data"])))
            except RedisError:
                await asyncio.sleep(1)  # Redis is away: the heartbeat logs it; try again shortly
            except Exception:
                # Never let the listener die: cancels would then wait for the heartbeat.
                logger.exception("cancel listener failed; it listens again in 1 s")
                await asyncio.sleep(1)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call, unused-ignore]  # unannotated before redis 8.2

    async def streams(self, after: str | None, count: int) -> tuple[list[bytes], str | None]:
        # The index holds every id once written; an id whose record has expired (its replica died) is dropped
        # from it here, by the first reader that finds it gone.
        try:
            ids = await self._client().zrangebylex(self._index, f"({after}" if after else "-", "+", 0, count + 1)
            page = [i.decode() if isinstance(i, bytes) else i for i in ids[:count]]
            pipe = self._client().pipeline(transaction=False)
            for stream_id in page:
                pipe.get(self._record_key(stream_id))
            found = await pipe.execute() if page else []
            gone = [stream_id for stream_id, record in zip(page, found, strict=True) if record is None]
            if gone:
                await self._client().zrem(self._index, *gone)
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return [r for r in found if r is not None], (page[-1] if len(ids) > count else None)

    async def stream(self, stream_id: str) -> bytes | None:
        try:
            record = await self._client().get(self._record_key(stream_id))
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return record.encode() if isinstance(record, str) else record

    async def _evalsha(
        self,
        name: str,
        calls: list[tuple[list[str], list[Any]]],
        *,
        prelude: list[tuple[Any, ...]] | None = None,
        answers: list[Any] | None = None,
    ) -> list[Any]:
        """Script `name` once per call, in one pipeline, with the `prelude` commands in front; one result (or
        exception) per call, and the prelude's replies appended to `answers` if given.

        EVALSHA is sent by hand: a pipeline of redis-py Script calls asks SCRIPT EXISTS first, a second round
        trip. Calls that find the script missing (a restarted Redis) are sent once more after loading it, and
        only those: the others have run."""
        self._client()  # registers the scripts
        script = self._scripts[name]
        head = list(prelude or ())
        try:
            replies = await self._pipe.execute([*head, *(("EVALSHA", script.sha, len(k), *k, *a) for k, a in calls)])
            results = replies[len(head) :]
            if answers is not None:
                answers += replies[: len(head)]
            missing = [i for i, result in enumerate(results) if isinstance(result, NoScriptError)]
            if missing:
                retry = [("EVALSHA", script.sha, len(calls[i][0]), *calls[i][0], *calls[i][1]) for i in missing]
                load = await self._pipe.execute([("SCRIPT", "LOAD", script.script), *retry])
                for i, result in zip(missing, load[1:], strict=True):
                    results[i] = result
        except RedisError as exc:
            raise _unavailable(exc) from exc
        return [_unavailable(r) if isinstance(r, RedisError) else r for r in results]

    async def release_all(self, leases: Iterable[tuple[str, str]], streams: Iterable[str] = ()) -> None:
        pipe = self._client().pipeline(transaction=False)
        for key, lease in leases:
            pipe.zrem(self._key(key, "conc"), lease)
        for stream_id in streams:
            pipe.delete(self._record_key(stream_id))
            pipe.zrem(self._index, stream_id)
        if not pipe.command_stack:
            return
        try:
            await pipe.execute()
        except RedisError as exc:
            raise _unavailable(exc) from exc

    @property
    def _index(self) -> str:
        return f"{self._prefix}streams"

    def _cancels_key(self, replica: str) -> str:
        return f"{self._prefix}cancels:{replica}"

    def _channel(self, replica: str) -> str:
        return f"{self._prefix}cancel:{replica}"

    def _record_key(self, stream_id: str) -> str:
        # Hash-tagged by the stream: its keys (the resume log too, later) share a Redis Cluster slot.
        return f"{self._prefix}stream:{{{stream_id}}}"

    def _key(self, principal: str, kind: str) -> str:
        # One hash tag per principal: the keys one admission script touches share a Redis Cluster slot.
        return f"{self._prefix}{{{principal}}}:{kind}"

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        self._client()
        try:
            return await self._scripts[script](keys=keys, args=args)
        except RedisError as exc:
            raise _unavailable(exc) from exc

    def _client(self) -> aioredis.Redis:
        return self.client


def _cancel(entry: str) -> tuple[str, str]:
    """`(stream_id, reason)` from a cancel as it is sent: `"<stream_id> <reason>"`."""
    stream_id, _, reason = entry.partition(" ")
    return stream_id, reason


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _unavailable(exc: RedisError) -> BackendUnavailable:
    return BackendUnavailable(f"Redis: {exc}", maybe_done=isinstance(exc, RedisTimeoutError))


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
