"""`HttpClient` on asyncio and httptools: a keep-alive HTTP/1.1 pool that does only what an LLM upstream needs.

Why it exists: measured in bench/, aiohttp's request machinery (URL and header objects, tracing hooks, its stream
reader) costs about 200 us of CPU per upstream request, a third of the proxy's whole cost per stream, and that is
what bounds time to first token when many requests arrive together. This client writes a request in one
`transport.write`, parses the response with httptools (llhttp, the parser in Node.js and uvicorn) and hands the
body over as it arrives. It does no redirects, proxies, cookies or decompression (it asks for `identity`).

One request at a time per connection; a connection goes back to the pool only when its response was read to the
end and the server allows keep-alive, and is cut otherwise. An idle connection is closed after `keepalive_expiry`
seconds (a burst leaves no crowd of idle sockets behind), and one the server closes leaves the pool at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Final, cast
from urllib.parse import urlsplit

import httptools

from app.errors import ProxyError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from providers.base import UpstreamTimeouts
from providers.http_client import ExceptionTable, translate_with

# Reading pauses when this much body is waiting for the relay: the upstream then feels the client's pace.
_HIGH_WATER: Final = 256 * 1024

# Every exception the transport can raise, translated in one place (tests/unit/test_error_mapping.py).
EXCEPTION_MAP: ExceptionTable = (
    (TimeoutError, UpstreamTimeout, "the upstream timed out"),
    (ConnectionRefusedError, UpstreamUnavailable, "the upstream refused the connection"),
    (ConnectionResetError, UpstreamUnavailable, "the upstream reset the connection"),
    (ConnectionError, UpstreamUnavailable, "the connection to the upstream failed"),
    (ssl.SSLError, UpstreamUnavailable, "the TLS handshake with the upstream failed"),
    (httptools.HttpParserError, UpstreamError, "the upstream sent an invalid HTTP response"),
    (httptools.HttpParserUpgrade, UpstreamError, "the upstream tried to switch protocols"),
    (OSError, UpstreamUnavailable, "cannot reach the upstream"),
)


def translate(exc: BaseException) -> ProxyError | None:
    return translate_with(EXCEPTION_MAP, exc)


class _Origin:
    __slots__ = ("authority", "host", "port", "ssl", "target")

    def __init__(self, url: str, tls: ssl.SSLContext) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = tls if parts.scheme == "https" else None
        self.authority = parts.netloc.rsplit("@", 1)[-1]
        self.target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class _Connection(asyncio.Protocol):
    """One upstream connection and the response currently arriving on it (httptools callbacks)."""

    def __init__(self, pool_key: tuple[str, int], on_lost: Callable[[_Connection], None]) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.pool_key = pool_key
        self._on_lost = on_lost
        self.expiry: asyncio.TimerHandle | None = None  # while idle in the pool
        self._watchdog: asyncio.TimerHandle | None = None  # the read timeout, while a chunk is awaited
        self._wait_started = 0.0
        self._idle_limit = 0.0
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.keep_alive = False
        self.complete = False
        self._headers_seen: asyncio.Future[None] = self._loop.create_future()
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
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
        if self._watchdog is not None:
            self._watchdog.cancel()
            self._watchdog = None
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
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > _HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        self._wake()

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
        if self._watchdog is not None:  # the last response's, which may be later than this one's read timeout
            self._watchdog.cancel()
            self._watchdog = None
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
            # One watchdog timer per connection, re-armed only when it fires, instead of a timer made and
            # cancelled per chunk: at one token per read that was a heap push and pop per token.
            self._wait_started = self._loop.time()
            self._idle_limit = idle_timeout
            if self._watchdog is None:
                self._watchdog = self._loop.call_at(self._wait_started + idle_timeout, self._check_idle)
            try:
                await self._waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft() if len(self._chunks) == 1 else b"".join(self._chunks)
        self._chunks.clear()
        self._buffered = 0
        return chunk

    def _check_idle(self) -> None:
        self._watchdog = None
        waiter = self._waiter
        if waiter is None or waiter.done() or self.closed:
            return  # not waiting: the next wait arms it again
        deadline = self._wait_started + self._idle_limit
        if self._loop.time() >= deadline:
            waiter.set_exception(TimeoutError("no data from the upstream within the read timeout"))
        else:
            self._watchdog = self._loop.call_at(deadline, self._check_idle)

    def listen(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed and not self._chunks

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class _Response:
    __slots__ = ("_connection", "_read_timeout")

    def __init__(self, connection: _Connection, read_timeout: float) -> None:
        self._connection = connection
        self._read_timeout = read_timeout

    @property
    def status(self) -> int:
        return self._connection.status

    def header(self, name: str) -> str | None:
        return self._connection.headers.get(name.lower())

    async def chunks(self) -> AsyncIterator[bytes]:
        connection, timeout = self._connection, self._read_timeout
        while True:
            try:
                chunk = await connection.next_chunk(timeout)
            except TimeoutError:
                raise UpstreamTimeout("the upstream went silent for longer than the read timeout") from None
            except (OSError, httptools.HttpParserError) as exc:
                raise UpstreamError(f"the upstream cut the response off: {exc}") from exc
            if not chunk:
                return
            yield chunk

    async def read(self, limit: int) -> bytes:
        body = b""
        async for chunk in self.chunks():
            body += chunk
            if len(body) >= limit:
                break
        return body[:limit]


class HttptoolsClient:
    def __init__(self, *, max_connections: int, keepalive_expiry: float = 15.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._tls = ssl.create_default_context()
        self._origins: dict[str, _Origin] = {}
        self._idle: dict[tuple[str, int], deque[_Connection]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._open: set[_Connection] = set()

    async def open(self) -> None:
        self._slots = asyncio.Semaphore(self._max_connections)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    @asynccontextmanager
    async def post(
        self, url: str, *, headers: Mapping[str, str], body: bytes, timeouts: UpstreamTimeouts
    ) -> AsyncIterator[_Response]:
        if self._slots is None:
            raise RuntimeError("HttptoolsClient.post() before open()")
        origin = self._origins.get(url) or self._origins.setdefault(url, _Origin(url, self._tls))
        request = _request_bytes(origin, headers, body)
        try:
            async with asyncio.timeout(timeouts.pool):
                await self._slots.acquire()
        except TimeoutError:
            raise UpstreamTimeout("no free upstream connection within the pool timeout") from None
        connection: _Connection | None = None
        try:
            try:
                connection = await self._send(origin, request, timeouts)
            except (OSError, httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                mapped = translate(exc)
                raise (mapped or UpstreamUnavailable(str(exc))) from exc
            yield _Response(connection, timeouts.read)
        finally:
            if connection is not None:
                self._release(origin, connection)
            self._slots.release()

    async def _send(self, origin: _Origin, request: bytes, timeouts: UpstreamTimeouts) -> _Connection:
        """Send the request and wait for the response headers; on any failure, the connection is cut."""
        reused = self._idle_connection(origin)
        if reused is not None:
            try:
                return await self._exchange(origin, reused, request, timeouts)
            except OSError:
                # A kept-alive connection the server closed while idle: nothing was answered, so sending the
                # request again on a new connection cannot run it twice.
                pass
        connection = await self._new_connection(origin, timeouts.connect)
        return await self._exchange(origin, connection, request, timeouts)

    async def _exchange(
        self, origin: _Origin, connection: _Connection, request: bytes, timeouts: UpstreamTimeouts
    ) -> _Connection:
        try:
            connection.send(request)
            await connection.wait_headers(timeouts.first_byte)
        except TimeoutError:
            self._release(origin, connection)
            raise UpstreamTimeout("timed out waiting for the upstream's response headers") from None
        except BaseException:
            # Cancelled (the client left), timed out or failed: closing is how the upstream learns of it.
            self._release(origin, connection)
            raise
        return connection

    def _idle_connection(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get((origin.host, origin.port))
        while idle:
            candidate = idle.pop()  # the most recently used: the likeliest to be alive, the others expire
            if candidate.expiry is not None:
                candidate.expiry.cancel()
                candidate.expiry = None
            if not candidate.closed and candidate.transport is not None and not candidate.transport.is_closing():
                return candidate
            self._forget(candidate)
        return None

    async def _new_connection(self, origin: _Origin, connect_timeout: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                key = (origin.host, origin.port)
                _, connection = await loop.create_connection(
                    lambda: _Connection(key, self._forget),
                    origin.host,
                    origin.port,
                    ssl=origin.ssl,
                    server_hostname=origin.host if origin.ssl else None,
                )
        except TimeoutError:
            raise UpstreamTimeout("timed out connecting to the upstream") from None
        self._open.add(connection)
        return connection

    def _release(self, origin: _Origin, connection: _Connection) -> None:
        if connection.reusable():
            connection.listen()  # reading, so that a close by the server while idle is noticed
            self._idle.setdefault(connection.pool_key, deque()).append(connection)
            loop = asyncio.get_running_loop()
            connection.expiry = loop.call_later(self._keepalive_expiry, self._expire, connection)
        else:
            # An unfinished response cannot be reused: closing it is how the upstream learns we left.
            connection.close()
            self._open.discard(connection)

    def _expire(self, connection: _Connection) -> None:
        connection.expiry = None
        self._forget(connection)
        connection.close()

    def _forget(self, connection: _Connection) -> None:
        """Out of the pool: expired, or closed by either side (also while idle)."""
        self._open.discard(connection)
        if connection.expiry is not None:
            connection.expiry.cancel()
            connection.expiry = None
        idle = self._idle.get(connection.pool_key)
        if idle is not None:
            with contextlib.suppress(ValueError):
                idle.remove(connection)
            if not idle:
                del self._idle[connection.pool_key]

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)  # let the transports run their close callbacks


def _request_bytes(origin: _Origin, headers: Mapping[str, str], body: bytes) -> bytes:
    lines = [f"POST {origin.target} HTTP/1.1", f"Host: {origin.authority}", f"Content-Length: {len(body)}"]
    lines.append("Accept-Encoding: identity")
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} cannot be sent: it holds a line break or a colon")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
