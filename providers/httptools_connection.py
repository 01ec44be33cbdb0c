"""One upstream HTTP/1.1 connection for `providers/httptools_client.py`: an asyncio protocol whose response is
parsed by httptools callbacks and handed over as it arrives, with flow control (reading pauses while the relay
is behind) and the read timeout (one watchdog timer per connection)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Final, cast

import httptools

from app.deadlines import Deadlines
from app.errors import UpstreamError, UpstreamTimeout

# Reading pauses when this much body is waiting for the relay: the upstream then feels the client's pace.
_HIGH_WATER: Final = 256 * 1024


class Connection(asyncio.Protocol):
    """One upstream connection and the response currently arriving on it (httptools callbacks)."""

    # Slots: one per open stream, so its size is part of each open stream's cost (bench/, open streams).
    __slots__ = (
        "_body_framed",
        "_buffered",
        "_chunks",
        "_deadlines",
        "_error",
        "_headers_seen",
        "_idle_limit",
        "_loop",
        "_on_lost",
        "_parser",
        "_paused",
        "_then",
        "_wait_started",
        "_waiter",
        "_watch_tick",
        "closed",
        "complete",
        "expiry",
        "headers",
        "keep_alive",
        "pool_key",
        "status",
        "transport",
    )

    def __init__(self, pool_key: tuple[str, int], on_lost: Callable[[Connection], None], deadlines: Deadlines) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self._deadlines = deadlines
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.pool_key = pool_key
        self._on_lost = on_lost
        self.expiry: asyncio.TimerHandle | None = None  # while idle in the pool
        self._watch_tick: int | None = None  # the read timeout's deadline, while a chunk is awaited
        self._wait_started = 0.0
        self._idle_limit = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.complete = False
        self._headers_seen: asyncio.Future[None] = self._loop.create_future()
        self._chunks: list[bytes] = []  # a list: a deque's first block alone is 600 bytes per connection
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._then: Callable[[Connection], None] | None = None  # what to do once the response completes
        self._error: BaseException | None = None
        self._body_framed = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # create_connection gives a stream transport (uvloop's does not subclass asyncio.Transport).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(exc)
            if self.transport is not None:
                self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._unwatch()
        self._on_lost(self)
        if self.complete:
            return
        if self._headers_seen.done() and not self._body_framed:
            # No Content-Length and no chunked encoding: the body ends when the connection does.
            self.on_message_complete()
            return
        self._fail(exc or ConnectionResetError("the upstream closed the connection"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        self.status = self._parser.get_status_code()
        self.keep_alive = self._parser.should_keep_alive()
        self._body_framed = "content-length" in self.headers or "chunked" in self.headers.get("transfer-encoding", "")
        if not self._headers_seen.done():
            self._headers_seen.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._then is not None:
            return  # the reader has ended the stream: what remains is the body's framing
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()
        then = self._then
        if then is not None:
            self._then = None
            then(self)

    # the request's side

    def _fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
        if not self._headers_seen.done():
            self._headers_seen.set_exception(exc)
            self._headers_seen.exception()  # retrieved here; the caller re-raises it from `headers()`
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def send(self, request: bytes) -> None:
        assert self.transport is not None  # noqa: S101 - set by connection_made before the pool hands it out
        if self._paused:
            # The last response filled the buffer and then ended: reading stayed paused, and the next response
            # would never be read (the request would time out waiting for headers).
            self.transport.resume_reading()
        self._unwatch()  # the last response's, which may be later than this one's read timeout
        self._reset()
        self.transport.write(request)

    async def wait_headers(self, seconds: float) -> None:
        async with asyncio.timeout(seconds):
            await self._headers_seen

    async def next_chunk(self, idle_timeout: float) -> bytes:
        """Everything that arrived since the last call, waiting at most `idle_timeout` for it; b"" at the end."""
        while not self._chunks:
            if self.complete:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            if self._paused and self.transport is not None:
                self._paused = False
                self.transport.resume_reading()
            # One deadline per connection, added again only when it passes, instead of a timer made and
            # cancelled per chunk: at one token per read that was a heap push and pop per token.
            self._wait_started = self._loop.time()
            self._idle_limit = idle_timeout
            if self._watch_tick is None:
                self._watch_tick = self._deadlines.add(self._wait_started + idle_timeout, self)
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunks = self._chunks
        chunk = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        return chunk

    def _unwatch(self) -> None:
        if self._watch_tick is not None:
            self._deadlines.remove(self._watch_tick, self)
            self._watch_tick = None

    def deadline_passed(self) -> None:
        self._watch_tick = None
        waiter = self._waiter
        if waiter is None or waiter.done() or self.closed:
            return  # not waiting: the next wait arms it again
        deadline = self._wait_started + self._idle_limit
        if self._loop.time() >= deadline:
            waiter.set_exception(TimeoutError("no data from the upstream within the read timeout"))
        else:
            self._watch_tick = self._deadlines.add(deadline, self)

    def listen(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and not self._chunks

    def may_be_reused(self) -> bool:
        """Whether the connection can be reused once its response completes (its body unread or not)."""
        return self.keep_alive and not self.closed and self._error is None

    def when_complete(self, then: Callable[[Connection], None]) -> None:
        """Call `then` now if the response is complete, else once it completes; the reader is done, so any body
        that is left or still arrives is dropped."""
        self._chunks.clear()
        self._buffered = 0
        if self.complete:
            then(self)
            return
        self._then = then
        self.listen()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Response:
    __slots__ = ("_connection", "_read_timeout", "ended")

    def __init__(self, connection: Connection, read_timeout: float) -> None:
        self._connection = connection
        self._read_timeout = read_timeout
        self.ended = False

    @property
    def status(self) -> int:
        return self._connection.status

    def header(self, name: str) -> str | None:
        return self._connection.headers.get(name.lower())

    def chunks(self) -> AsyncIterator[bytes]:
        return _Chunks(self._connection, self._read_timeout)

    def end(self) -> None:
        self.ended = True

    async def read(self, limit: int) -> bytes:
        body = b""
        async for chunk in self.chunks():
            body += chunk
            if len(body) >= limit:
                break
        return body[:limit]


class _Chunks:
    """The body's chunks as they come. An iterator object, not an async generator: a generator left before its
    end (the relay stops at `[DONE]`, before the body's terminating chunk) is finalized by the event loop's
    async-generator hook, which schedules its `aclose()` as a task of its own through `call_soon_threadsafe`:
    a wake-up write, a task and a loop turn per request."""

    __slots__ = ("_connection", "_timeout")

    def __init__(self, connection: Connection, timeout: float) -> None:
        self._connection = connection
        self._timeout = timeout

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        try:
            chunk = await self._connection.next_chunk(self._timeout)
        except TimeoutError:
            raise UpstreamTimeout("the upstream went silent for longer than the read timeout") from None
        except (OSError, httptools.HttpParserError) as exc:
            raise UpstreamError(f"the upstream cut the response off: {exc}") from exc
        if not chunk:
            raise StopAsyncIteration
        return chunk
