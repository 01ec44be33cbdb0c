"""Stream logs in Redis Streams, so that a stream can be resumed on any replica.

Keys, hash-tagged by the stream like its registry record (one Redis Cluster slot per stream):
- `<prefix>stream:{<id>}:log`: the Redis Stream. Each entry carries the frames one flush took from the
  producer's log: `f` (the seq of its first frame), `d` (the frames, as the SSE bytes every watcher sends) and
  `t` (1 for the entry holding the terminal frame). Its id is `0-<last seq + 1>`, so that a reader can ask for
  what follows a seq without scanning, and so that nothing can be appended twice or out of order.
- `<prefix>stream:{<id>}:meta`: whose stream it is (the principal's digest), its request id and its frames' wire
  format (`/chat/stream` or OpenAI chunks, for the frames a watcher adds), written as soon
  as the stream is created (before its first frame), so that a client quick to reconnect elsewhere finds it.
- `<prefix>stream:{<id>}:live`: set by the first flush for as long as a registry record lives, so that a stream
  is never taken for lost before its replica's first heartbeat has written its record.
- `<prefix>stream:{<id>}:watching`: renewed by watchers on other replicas, so that the producing replica does not
  stop a stream for want of watchers while someone elsewhere follows it.

Writes come from one flusher per replica, one pipeline per flush for all its streams, on a connection of its own
(a large flush never delays an admission). Each key's TTL is set when the log is first written and when it
ends, and renewed in between only every half retention time, so most flushes are one XADD per stream.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from app.backends.base import BackendUnavailable
from app.backends.resp import Command, RespConnection
from app.dialects import Dialect
from app.frame_log import FrameLog
from app.frames import ErrorFrame

# How long a remote watcher blocks on the log before it looks whether the producer is still alive.
BLOCK_MS = 1000

# A lost producer's ending takes the highest entry id there is: whatever the producer may still flush after it
# (it was only taken for dead) is refused as out of order, and every watcher, however far ahead of the log its
# client is, reads it after its own seq. Its seq is the log's next one, or the next after the client of the
# watcher that appends it, if that one holds more than the log (frames not flushed when the producer died).
LOST_ENTRY_ID = "0-18446744073709551615"

# Replies: 0 the producer lives (its record or live key), 1 appended, 2 the log has its ending already, 3 the
# stream is gone (no meta, no log: expired).
MARK_LOST = (
    """
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[3]) == 1 then return 0 end
local seq = tonumber(ARGV[4]) + 1
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if #last > 0 then
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 't' and fields[i + 1] == '1' then return 2 end
  end
  local following = tonumber(string.match(last[1][1], '-(%d+)$'))
  if following > seq then seq = following end
elseif redis.call('EXISTS', KEYS[4]) == 0 then
  return 3
end
local frame = 'id: ' .. ARGV[1] .. '.' .. seq .. '\\n' .. ARGV[5] .. 'data: ' .. ARGV[2] .. '\\n\\n'
redis.call('XADD', KEYS[1], '"""
    + LOST_ENTRY_ID
    + """', 'f', seq, 'd', frame, 't', '1', 'l', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[4], ARGV[3])
return 1
"""
)


class Lost(enum.IntEnum):
    """What `mark_lost` found."""

    ALIVE = 0
    MARKED = 1
    ENDED = 2
    GONE = 3


@dataclass(frozen=True, slots=True)
class LogEntry:
    first: int  # seq of its first frame
    last: int  # seq of its last frame
    data: bytes
    terminal: bool
    entry_id: str  # where a reader goes on from
    lost: bool = False  # the `stream_lost` ending a watcher appended

    def visible_after(self, seq: int) -> bool:
        """Whether a client holding frames up to `seq` has yet to get any of this entry's. A lost ending goes to
        every client but the one whose last frame it was (its id is the only one it can hold of it)."""
        return seq != self.first if self.lost else self.last > seq


@dataclass(frozen=True, slots=True)
class LogMeta:
    owner: str
    request_id: str
    dialect: Dialect


class _Written:
    __slots__ = ("expires_at", "first_seq", "log_created")

    def __init__(self, log_created: bool = False, first_seq: int = 0, expires_at: float = 0.0) -> None:
        self.log_created = log_created  # the Redis Stream exists (its first XADD went in): its TTL is set
        self.first_seq = first_seq  # the oldest seq the Redis copy still holds
        self.expires_at = expires_at  # when the keys' TTL was last set, plus half the retention time

    def copy(self) -> _Written:
        return _Written(self.log_created, self.first_seq, self.expires_at)


class RedisLogStore:
    def __init__(
        self, url: str, *, key_prefix: str, timeout: float, retention_seconds: float, live_seconds: float
    ) -> None:
        self._url = url
        self._prefix = key_prefix
        self._timeout = timeout
        self._retention_ms = int(retention_seconds * 1000)
        self._live_ms = int(live_seconds * 1000)
        self._pipe = RespConnection(url, timeout=timeout)
        self._redis: aioredis.Redis | None = None
        self._mark_lost: Any = None
        self._written: dict[str, _Written] = {}

    @property
    def client(self) -> aioredis.Redis:
        """Reads, some blocking: a client of their own, whose socket time-out outlasts a blocking read."""
        if self._redis is None:
            self._redis = aioredis.Redis.from_url(
                self._url,
                socket_timeout=BLOCK_MS / 1000 + self._timeout,
                socket_connect_timeout=self._timeout,
            )
            self._mark_lost = self._redis.register_script(MARK_LOST)
        return self._redis

    async def aclose(self) -> None:
        await self._pipe.aclose()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def _key(self, stream_id: str, kind: str) -> str:
        return f"{self._prefix}stream:{{{stream_id}}}:{kind}"

    def _record_key(self, stream_id: str) -> str:
        return f"{self._prefix}stream:{{{stream_id}}}"

    async def flush(self, logs: Sequence[FrameLog], refused: Sequence[FrameLog] = ()) -> bool:
        """Write what each log has that Redis has not, in one pipeline, and forget the `refused` ones; a log's
        `flushed` moves on only once Redis took its entries. Raises `BackendUnavailable` if the pipeline failed
        (the next flush retries). False if there was nothing to write."""
        commands: list[Command] = []
        ends: list[tuple[FrameLog, int]] = []
        # What Redis will hold once the pipeline succeeds: kept only then, or a failed flush would pass for a
        # TTL set (and a silent log's keys would expire before the next renewal).
        states: dict[str, _Written] = {}
        now = time.monotonic()
        for log in refused:
            commands.append(("DEL", self._key(log.stream_id, "meta"), self._key(log.stream_id, "live")))
            self._written.pop(log.stream_id, None)
        for log in logs:
            ends.append((log, log.end))
            state = states[log.stream_id] = self._written.get(log.stream_id, _Written()).copy()
            commands += self._commands(log, state, now)
        if not commands:
            return False
        try:
            replies = await self._pipe.execute(commands)
        except RedisError as exc:
            raise BackendUnavailable(f"could not write stream logs: {exc}") from exc
        for reply in replies:
            # An XADD refused as out of order: a watcher declared the stream lost (its replica was taken for
            # dead); the log keeps that ending.
            if isinstance(reply, ResponseError) and "equal or smaller" not in str(reply):
                raise BackendUnavailable(f"could not write stream logs: {reply}")
        self._written.update(states)
        for log, end in ends:
            log.announced = True
            log.flushed = end
            if log.ended and end == log.end:
                self._written.pop(log.stream_id, None)
                if log.stored is not None and not log.stored.done():
                    log.stored.set_result(None)
        return True

    def _commands(self, log: FrameLog, written: _Written, now: float) -> list[Command]:
        """What the flush sends for one log: its announcement, its new entries in one XADD, a trim, TTLs; and
        `written` as it will be once they are in."""
        commands: list[Command] = []
        stream_id = log.stream_id
        key = self._key(stream_id, "log")
        if not log.announced:
            meta = ("o", log.owner, "r", log.request_id, "d", log.dialect.value)
            commands.append(("HSET", self._key(stream_id, "meta"), *meta))
            commands.append(("SET", self._key(stream_id, "live"), "1", "PX", self._live_ms))
        entries = log.entries(log.flushed)
        if entries:
            first, last = entries[0][0], entries[-1][1]
            data = entries[0][2] if len(entries) == 1 else b"".join(e[2] for e in entries)
            commands.append(("XADD", key, f"0-{last + 1}", "f", first, "d", data, "t", 1 if log.ended else 0))
            if not written.log_created:
                # The key is made by this XADD: a TTL now, or a replica dying before its next renewal leaves it.
                written.log_created = True
                commands.append(("PEXPIRE", key, self._retention_ms))
        if log.first_seq > written.first_seq:
            written.first_seq = log.first_seq
            commands.append(("XTRIM", key, "MINID", f"0-{log.first_seq + 1}"))
        if log.ended or now >= written.expires_at:
            written.expires_at = now + self._retention_ms / 2000
            for kind in ("log", "meta"):
                commands.append(("PEXPIRE", self._key(stream_id, kind), self._retention_ms))
        return commands

    async def watched(self, stream_id: str) -> bool:
        """Whether a watcher on another replica follows the stream now."""
        try:
            return bool(await self.client.exists(self._key(stream_id, "watching")))
        except RedisError as exc:
            raise BackendUnavailable(str(exc)) from exc

    async def watching(self, stream_id: str, seconds: float) -> None:
        await self.client.set(self._key(stream_id, "watching"), b"1", px=int(seconds * 1000))

    async def meta(self, stream_id: str) -> LogMeta | None:
        fields: Any = await self.client.hgetall(self._key(stream_id, "meta"))
        if not fields or b"o" not in fields:
            return None
        # A log announced by a replica of a release before OpenAI streams were resumable has no `d`.
        try:
            dialect = Dialect(fields.get(b"d", b"chat").decode())
        except ValueError:  # written by a later release, with a format this one does not know
            dialect = Dialect.CHAT
        return LogMeta(owner=fields[b"o"].decode(), request_id=fields.get(b"r", b"").decode(), dialect=dialect)

    async def entries(self, stream_id: str, after: int) -> list[LogEntry]:
        """The entries holding frames after seq `after`."""
        raw: Any = await self.client.xrange(self._key(stream_id, "log"), min=f"0-{after + 2}")
        return [_entry(entry_id, fields) for entry_id, fields in raw]

    async def follow(self, stream_id: str, cursor: str) -> list[LogEntry]:
        """The entries after the entry id `cursor`, waiting up to `BLOCK_MS` for one."""
        reply: Any = await self.client.xread({self._key(stream_id, "log"): cursor}, block=BLOCK_MS)
        return [_entry(entry_id, fields) for entry_id, fields in (reply[0][1] if reply else [])]

    async def latest(self, stream_id: str) -> LogEntry | None:
        raw: Any = await self.client.xrevrange(self._key(stream_id, "log"), count=1)
        return _entry(*raw[0]) if raw else None

    async def mark_lost(self, stream_id: str, error: ErrorFrame, dialect: Dialect, after: int) -> Lost:
        """End a stream whose producer is gone (no record, no live key, no terminal entry) with one `error`
        frame, atomically: whichever watcher comes first appends it, the others find it there. `after`: the
        last seq the caller's client holds."""
        self.client  # noqa: B018 - registers the script
        keys = [
            self._key(stream_id, "log"),
            self._record_key(stream_id),
            self._key(stream_id, "live"),
            self._key(stream_id, "meta"),
        ]
        args = [stream_id, dialect.error_data(error), self._retention_ms, after, dialect.error_fields]
        return Lost(await self._mark_lost(keys=keys, args=args))


def _entry(entry_id: bytes, fields: dict[bytes, bytes]) -> LogEntry:
    first, data, position = int(fields[b"f"]), fields[b"d"], entry_id.decode()
    if fields.get(b"l") == b"1":
        return LogEntry(first=first, last=first, data=data, terminal=True, entry_id=position, lost=True)
    last = int(entry_id.rsplit(b"-", 1)[1]) - 1
    return LogEntry(first=first, last=last, data=data, terminal=fields.get(b"t") == b"1", entry_id=position)
