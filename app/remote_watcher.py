"""Watching a stream produced on another replica, through its log in Redis.

`SharedLogReader.watch` answers a resume that this replica cannot serve from its own logs: from the log's
meta (whose stream it is) and its entries after the resume point it decides 404, 410 or 204 before anything is
committed, exactly as a local resume would. `RemoteWatcher` then sends those entries and follows the tail
with `XREAD BLOCK` (no polling, no pub/sub handshake to race with). Each time a blocking read comes back empty it
renews the stream's `watching` key (so the producing replica does not stop the stream for want of watchers)
and asks whether the producer is still alive; if its record and live key have both expired with no terminal
entry, the stream ends with one `error` `stream_lost`, appended by a Lua script that checks and appends at once:
whichever watcher gets there first writes it, every watcher reads the same frame.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random

from litestar.types import ASGIApp, Receive, Scope, Send
from redis.exceptions import RedisError

from app.backends.base import BackendUnavailable
from app.backends.redis_log import BLOCK_MS, LogEntry, Lost, RedisLogStore
from app.dialects import Dialect
from app.disconnect import DisconnectWatch
from app.errors import StoreUnavailable, StreamNotFound, StreamTruncated
from app.frame_log import FRAME_END
from app.frames import ErrorFrame
from app.keepalive import KeepAlive, Pings
from app.resume import ResumePoint, resume_head
from app.shutdown import ShutdownDrain
from app.sse import encode_retry
from app.streams import SHUTDOWN_RETRY_MS
from app.watcher import idless_error

logger = logging.getLogger("tokenrelay.resume")

LOST_MESSAGE = "the server producing this stream stopped before its end; what it produced was replayed"
TRUNCATED = "the stream's log dropped frames after this one before they were stored; they cannot be replayed"
STORE_FAILED = "the stream store failed; resume with Last-Event-ID in a moment"
HANDED_ON = "this server is shutting down; resume with Last-Event-ID on another"


class SharedLogReader:
    def __init__(self, store: RedisLogStore, drain: ShutdownDrain) -> None:
        self._store = store
        self._drain = drain

    async def watch(self, point: ResumePoint, owner: str, pings: Pings) -> ASGIApp | None:
        store = self._store
        try:
            meta = await store.meta(point.stream_id)
            if meta is None or meta.owner != owner:
                raise StreamNotFound("no such stream (it may have expired)")
            entries = [e for e in await store.entries(point.stream_id, point.seq) if e.visible_after(point.seq)]
            if entries and not entries[0].lost and entries[0].first > point.seq + 1:
                raise StreamTruncated(
                    f"the stream's log no longer holds the frames after {point.seq}; its oldest is {entries[0].first}"
                )
            if not entries:
                # Nothing after the point yet: the stream has ended (204), or its next frames are on their way.
                latest = await store.latest(point.stream_id)
                if latest is not None and latest.terminal:
                    if not latest.visible_after(point.seq):
                        return None
                    # The ending was flushed between the two reads: the log is whole now, read it again.
                    entries = [e for e in await store.entries(point.stream_id, point.seq) if e.visible_after(point.seq)]
        except RedisError as exc:
            raise StoreUnavailable("the stream store is unreachable; retry shortly", retry_after=1) from exc
        lost = ErrorFrame(code="stream_lost", message=LOST_MESSAGE, retryable=True, request_id=meta.request_id)
        return RemoteWatcher(store, point, entries, pings=pings, lost=lost, dialect=meta.dialect, drain=self._drain)


class RemoteWatcher:
    """A watcher is no stream of this replica's: when this replica shuts down it hands its client on (a short,
    jittered `retry:`, then the end of the response) and EventSource resumes on another replica."""

    __slots__ = (
        "_dialect",
        "_drain",
        "_entries",
        "_lost",
        "_pings",
        "_point",
        "_stopping",
        "_store",
        "_task",
    )

    def __init__(
        self,
        store: RedisLogStore,
        point: ResumePoint,
        entries: list[LogEntry],
        *,
        pings: Pings,
        lost: ErrorFrame,
        dialect: Dialect,
        drain: ShutdownDrain,
    ) -> None:
        self._dialect = dialect
        self._drain = drain
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._store = store
        self._point = point
        self._entries = entries
        self._pings = pings
        self._lost = lost  # the `stream_lost` error, should this watcher be the one to append it

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = self._task = asyncio.current_task()
        assert task is not None  # noqa: S101 - an ASGI app always runs inside a task
        disconnect = DisconnectWatch(scope, receive, task.cancel)
        keepalive = self._pings.keepalive(send, self._dialect.keepalive)
        self._drain.track(self)
        try:
            await send({"type": "http.response.start", "status": 200, "headers": resume_head(self._point.stream_id)})
            if self._drain.draining:
                # Arrived after the drain began (or after it ended, while uvicorn finishes): nothing here will
                # outlive the process, so the client goes elsewhere at once.
                await _hand_on(send, self._dialect)
                return
            keepalive.start()
            if not await self._follow(send, keepalive, disconnect):
                # The cancellation was swallowed in a blocking read of the Redis client (redis-py returned from an
                # XREAD cancelled at the wrong moment, seen 1 shutdown in 7): `_follow` saw the flags instead.
                if task.cancelling():
                    task.uncancel()
                if not disconnect.left:
                    await _hand_on(send, self._dialect)
        except asyncio.CancelledError:
            if not (disconnect.left or self._stopping):
                raise
            task.uncancel()
            if self._stopping and not disconnect.left:
                with contextlib.suppress(Exception):
                    await _hand_on(send, self._dialect)
        finally:
            self._drain.untrack(self)
            keepalive.stop()
            disconnect.close()

    def stop_for_shutdown(self) -> None:
        if self._task is not None and not self._stopping:
            self._stopping = True
            self._task.cancel()

    async def _follow(self, send: Send, keepalive: KeepAlive, disconnect: DisconnectWatch) -> bool:
        """Relay the log until the response ends (True), or until a shutdown or the client's leaving stops it
        (False: the response is still open)."""
        stream_id, after, entries = self._point.stream_id, self._point.seq, self._entries
        # Read on from the entry that may end with the client's own last frame (its id is that seq + 1): a
        # client can hold frames the log has yet to get, up to the ending itself.
        cursor = entries[-1].entry_id if entries else f"0-{max(after, 0)}"
        watching_until = 0.0
        loop = asyncio.get_running_loop()
        while not (self._stopping or disconnect.left):
            parts = []
            terminal = False
            for entry in entries:
                if not entry.visible_after(after):
                    # Entries may overlap (a flush sent again after a lost reply); an ending not to send again
                    # still ends the response.
                    terminal = entry.terminal
                    continue
                if not entry.lost and entry.first > after + 1:
                    # The producer's log dropped frames before they were flushed (its byte cap, with Redis down):
                    # say so rather than relay a stream with a hole in it.
                    parts.append(idless_error(self._dialect, "stream_truncated", TRUNCATED, ""))
                    terminal = True
                    break
                parts.append(entry.data if entry.lost else _after(entry, after))
                after = max(after, entry.last)
                terminal = entry.terminal
            body = b"".join(parts)
            if body or terminal:
                keepalive.wrote()
                await send({"type": "http.response.body", "body": body, "more_body": not terminal})
            if terminal:
                return True
            try:
                if loop.time() >= watching_until:
                    watching_until = loop.time() + BLOCK_MS / 1000
                    await self._store.watching(stream_id, 3 * BLOCK_MS / 1000)
                entries = await self._store.follow(stream_id, cursor)
                if entries:
                    cursor = entries[-1].entry_id
                else:
                    entries, ending = await self._ending(after)
                    if ending is not None:
                        await send({"type": "http.response.body", "body": ending, "more_body": False})
                        return True
            except (RedisError, BackendUnavailable) as exc:
                logger.warning("stream %s: the stream store failed under a watcher: %s", stream_id, exc)
                await send(
                    {
                        "type": "http.response.body",
                        "body": idless_error(self._dialect, "internal", STORE_FAILED, ""),
                        "more_body": False,
                    }
                )
                return True
        return False

    async def _ending(self, after: int) -> tuple[list[LogEntry], bytes | None]:
        """After a blocking read found nothing: entries to send (none: read on), or the last bytes of a response
        whose stream is over for this client."""
        stream_id = self._point.stream_id
        found = await self._store.mark_lost(stream_id, self._lost, self._dialect, after)
        if found is Lost.MARKED:
            logger.warning("stream %s: its producer is gone; ended it as lost", stream_id)
        elif found is Lost.ENDED:
            # Ended since the read (another watcher marked it lost, or the last flush came), or the client holds
            # the stream's last frame already.
            entries = await self._store.entries(stream_id, after)
            return entries, None if any(e.visible_after(after) for e in entries) else b""
        elif found is Lost.GONE:
            logger.warning("stream %s: its log expired under a watcher", stream_id)
            return [], self._dialect.error(self._lost)
        return [], None


def _after(entry: LogEntry, seq: int) -> bytes:
    """The entry's frames after `seq`."""
    if entry.first > seq:
        return entry.data
    if entry.last <= seq:
        return b""
    frames = entry.data.split(FRAME_END)[seq + 1 - entry.first : -1]
    return b"".join(frame + FRAME_END for frame in frames)


async def _hand_on(send: Send, dialect: Dialect) -> None:
    """End the response with a short, jittered `retry:` and no terminal frame: EventSource reconnects at once, and
    the load balancer sends it to a replica that is not going away. An OpenAI client has no EventSource to do
    that: it is told why its stream stopped, in an error it can resume after."""
    if dialect is Dialect.OPENAI:
        # No `retry:` block: with no data it would reach an OpenAI parser as an empty event.
        body = idless_error(dialect, "server_shutdown", HANDED_ON, "")
    else:
        body = encode_retry(random.randint(*SHUTDOWN_RETRY_MS))  # noqa: S311 - jitter, not a secret
    await send({"type": "http.response.body", "body": body, "more_body": False})
