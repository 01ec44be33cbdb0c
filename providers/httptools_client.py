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
from collections.abc import Mapping
from types import TracebackType
from urllib.parse import urlsplit

import httptools

from app.deadlines import Deadlines
from app.errors import ProxyError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from providers.base import UpstreamTimeouts
from providers.http_client import ExceptionTable, translate_with
from providers.httptools_connection import Connection, Response

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


class HttptoolsClient:
    def __init__(self, *, max_connections: int, keepalive_expiry: float = 15.0, framing_seconds: float = 1.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        # How long a connection waits, after its stream's end marker, for the rest of the body to be reusable.
        self._framing_seconds = framing_seconds
        self._tls = ssl.create_default_context()
        self._origins: dict[str, _Origin] = {}
        # Per origin, its idle connections, oldest first: a dict, so that one closed or expired leaves in O(1)
        # (a deque's `remove` scanned them all, for each of thousands expiring after a burst).
        self._idle: dict[tuple[str, int], dict[Connection, None]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._open: set[Connection] = set()
        self._finishing: set[Connection] = set()  # waiting for the rest of a body after their stream ended
        self._deadlines = Deadlines()  # the read timeouts of all its connections, on one loop timer

    async def open(self) -> None:
        self._slots = asyncio.Semaphore(self._max_connections)

    @property
    def open_connections(self) -> int:
        return len(self._open)

    @property
    def idle_connections(self) -> int:
        return sum(len(idle) for idle in self._idle.values())

    def post(self, url: str, *, headers: Mapping[str, str], body: bytes, timeouts: UpstreamTimeouts) -> _Exchange:
        slots = self._slots
        if slots is None:
            raise RuntimeError("HttptoolsClient.post() before open()")
        origin = self._origins.get(url) or self._origins.setdefault(url, _Origin(url, self._tls))
        return _Exchange(self, slots, origin, _request_bytes(origin, headers, body), timeouts)

    async def _send(self, origin: _Origin, request: bytes, timeouts: UpstreamTimeouts) -> Connection:
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
        self, origin: _Origin, connection: Connection, request: bytes, timeouts: UpstreamTimeouts
    ) -> Connection:
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

    def _idle_connection(self, origin: _Origin) -> Connection | None:
        idle = self._idle.get((origin.host, origin.port))
        while idle:
            candidate, _ = idle.popitem()  # the most recently used: the likeliest to be alive, the others expire
            if candidate.expiry is not None:
                candidate.expiry.cancel()
                candidate.expiry = None
            if not candidate.closed and candidate.transport is not None and not candidate.transport.is_closing():
                return candidate
            self._forget(candidate)
        return None

    async def _new_connection(self, origin: _Origin, connect_timeout: float) -> Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(connect_timeout):
                key = (origin.host, origin.port)
                _, connection = await loop.create_connection(
                    lambda: Connection(key, self._forget, self._deadlines),
                    origin.host,
                    origin.port,
                    ssl=origin.ssl,
                    server_hostname=origin.host if origin.ssl else None,
                )
        except TimeoutError:
            raise UpstreamTimeout("timed out connecting to the upstream") from None
        self._open.add(connection)
        return connection

    def _release(self, origin: _Origin, connection: Connection, *, ended: bool = False) -> bool:
        """Pool or close the connection of a finished exchange; True if it waits for the rest of its body first,
        and holds the exchange's pool slot until then."""
        if connection.reusable():
            self._keep(connection)
            return False
        if ended and connection.may_be_reused():
            # The stream ended (`[DONE]`) before its body did: upstreams write the terminating chunk apart, a
            # moment later. Kept if it comes soon; closed, it would cost the next request a new connection (and
            # a TLS handshake).
            self._finishing.add(connection)
            loop = asyncio.get_running_loop()
            connection.expiry = loop.call_later(self._framing_seconds, self._expire, connection)
            connection.when_complete(self._keep)
            return True
        # An unfinished response cannot be reused: closing it is how the upstream learns we left.
        connection.close()
        self._open.discard(connection)
        return False

    def _settle(self, connection: Connection) -> None:
        """A connection that waited for the rest of its body is kept or gone: its pool slot is free."""
        if connection in self._finishing:
            self._finishing.discard(connection)
            if self._slots is not None:
                self._slots.release()

    def _keep(self, connection: Connection) -> None:
        self._settle(connection)
        if connection.expiry is not None:
            connection.expiry.cancel()
            connection.expiry = None
        if not connection.reusable():  # completed with a body after the end, or closed meanwhile
            self._forget(connection)
            connection.close()
            return
        connection.listen()  # reading, so that a close by the server while idle is noticed
        self._idle.setdefault(connection.pool_key, {})[connection] = None
        loop = asyncio.get_running_loop()
        connection.expiry = loop.call_later(self._keepalive_expiry, self._expire, connection)

    def _expire(self, connection: Connection) -> None:
        connection.expiry = None
        self._forget(connection)
        connection.close()

    def _forget(self, connection: Connection) -> None:
        """Out of the pool: expired, or closed by either side (also while idle)."""
        self._settle(connection)
        self._open.discard(connection)
        if connection.expiry is not None:
            connection.expiry.cancel()
            connection.expiry = None
        idle = self._idle.get(connection.pool_key)
        if idle is not None:
            idle.pop(connection, None)
            if not idle:
                del self._idle[connection.pool_key]

    async def aclose(self) -> None:
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()
        self._finishing.clear()
        with contextlib.suppress(Exception):
            await asyncio.sleep(0)  # let the transports run their close callbacks


class _Exchange:
    """One request and its response, for `async with`: entering sends the request (on a pooled connection or a
    new one) and waits for the response's headers; leaving returns the connection to the pool, or closes it.

    An object rather than an `@asynccontextmanager` generator: it lives as long as its stream."""

    __slots__ = ("_client", "_connection", "_holds_slot", "_origin", "_request", "_response", "_slots", "_timeouts")

    def __init__(
        self,
        client: HttptoolsClient,
        slots: asyncio.Semaphore,
        origin: _Origin,
        request: bytes,
        timeouts: UpstreamTimeouts,
    ) -> None:
        self._client = client
        self._slots = slots
        self._origin = origin
        self._request = request
        self._timeouts = timeouts
        self._holds_slot = False
        self._connection: Connection | None = None
        self._response: Response | None = None

    async def __aenter__(self) -> Response:
        client, slots, timeouts = self._client, self._slots, self._timeouts
        await self._take_slot()
        try:
            connection = await client._send(self._origin, self._request, timeouts)
        except (OSError, httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            slots.release()
            mapped = translate(exc)
            raise (mapped or UpstreamUnavailable(str(exc))) from exc
        except BaseException:
            slots.release()
            raise
        self._holds_slot, self._connection = True, connection
        self._request = b""  # sent: the stream need not keep it
        self._response = response = Response(connection, timeouts.read)
        return response

    async def _take_slot(self) -> None:
        slots = self._slots
        if not slots.locked():
            await slots.acquire()  # free: no wait, and no timer to arm and cancel
            return
        try:
            async with asyncio.timeout(self._timeouts.pool):
                await slots.acquire()
        except TimeoutError:
            raise UpstreamTimeout("no free upstream connection within the pool timeout") from None

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        connection, response = self._connection, self._response
        self._connection = self._response = None
        handed_on = False  # the slot goes with a connection that waits for the rest of its body
        if connection is not None and response is not None:
            handed_on = self._client._release(self._origin, connection, ended=response.ended)
        if self._holds_slot:
            self._holds_slot = False
            if not handed_on:
                self._slots.release()


def _request_bytes(origin: _Origin, headers: Mapping[str, str], body: bytes) -> bytes:
    lines = [f"POST {origin.target} HTTP/1.1", f"Host: {origin.authority}", f"Content-Length: {len(body)}"]
    lines.append("Accept-Encoding: identity")
    for name, value in headers.items():
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"header {name!r} cannot be sent: it holds a line break or a colon")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
