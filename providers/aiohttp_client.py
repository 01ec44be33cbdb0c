"""`HttpClient` on aiohttp: the default, chosen by measurement (README, "Design notes")."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager

import aiohttp

from app.errors import (
    ProxyError,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from providers.base import UpstreamTimeouts
from providers.http_client import ExceptionTable, translate_with, translated

# Most specific first: the first entry that matches an exception decides its translation.
EXCEPTION_MAP: ExceptionTable = (
    (aiohttp.ConnectionTimeoutError, UpstreamTimeout, "timed out connecting to the upstream"),
    (
        aiohttp.SocketTimeoutError,
        UpstreamTimeout,
        "the upstream went silent for longer than the read timeout",
    ),
    (aiohttp.ServerTimeoutError, UpstreamTimeout, "the upstream timed out"),
    (aiohttp.ClientConnectorError, UpstreamUnavailable, "cannot connect to the upstream"),
    (aiohttp.ServerDisconnectedError, UpstreamError, "the upstream closed the connection"),
    (aiohttp.ClientPayloadError, UpstreamError, "the upstream cut the response off"),
    (aiohttp.ClientResponseError, UpstreamError, "the upstream sent an invalid HTTP response"),
    (aiohttp.ServerFingerprintMismatch, UpstreamUnavailable, "the upstream's TLS fingerprint does not match"),
    (aiohttp.InvalidURL, UpstreamUnavailable, "the upstream URL is invalid"),
    (aiohttp.ClientConnectionError, UpstreamUnavailable, "the connection to the upstream failed"),
    (aiohttp.ClientError, UpstreamError, "the upstream request failed"),
    (aiohttp.WSMessageTypeError, UpstreamError, "the upstream sent an unexpected WebSocket message"),
    (asyncio.TimeoutError, UpstreamTimeout, "the upstream timed out"),
)


def translate(exc: BaseException) -> ProxyError | None:
    return translate_with(EXCEPTION_MAP, exc)


def _translated() -> AbstractContextManager[None]:
    return translated(EXCEPTION_MAP, (TimeoutError, aiohttp.ClientError))


class _Response:
    __slots__ = ("_response",)

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status

    def header(self, name: str) -> str | None:
        return self._response.headers.get(name)

    async def chunks(self) -> AsyncIterator[bytes]:
        content = self._response.content
        with _translated():
            while True:
                # readany() hands over whatever arrived, without waiting to fill a fixed-size buffer.
                chunk = await content.readany()
                if not chunk:
                    return
                yield chunk

    def end(self) -> None:
        """Nothing to do: the library closes the connection of a response left unread."""

    async def read(self, limit: int) -> bytes:
        with _translated():
            return await self._response.content.read(limit)


class AiohttpClient:
    def __init__(self, *, max_connections: int, keepalive_expiry: float = 15.0) -> None:
        self._max_connections = max_connections
        self._keepalive_expiry = keepalive_expiry
        self._session: aiohttp.ClientSession | None = None

    async def open(self) -> None:
        # Made in open(), not __init__: aiohttp binds a session to the event loop that creates it.
        if self._session is None:
            connector = aiohttp.TCPConnector(
                limit=self._max_connections,
                limit_per_host=0,
                ttl_dns_cache=300,
                keepalive_timeout=self._keepalive_expiry,
            )
            # No cookie jar and no environment proxies: an API relay carries neither, and both cost per request.
            self._session = aiohttp.ClientSession(
                connector=connector,
                trust_env=False,
                cookie_jar=aiohttp.DummyCookieJar(),
                skip_auto_headers=("User-Agent",),
            )

    @asynccontextmanager
    async def post(
        self, url: str, *, headers: Mapping[str, str], body: bytes, timeouts: UpstreamTimeouts
    ) -> AsyncIterator[_Response]:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=timeouts.pool + timeouts.connect,
            sock_connect=timeouts.connect,
            sock_read=timeouts.read,
        )
        session = self._session
        if session is None:
            raise RuntimeError("AiohttpClient.post() before open()")
        with _translated():
            async with asyncio.timeout(timeouts.pool + timeouts.connect + timeouts.first_byte):
                response = await session.post(
                    url, data=body, headers={**headers, "Accept-Encoding": "identity"}, timeout=timeout
                )
        try:
            yield _Response(response)
        finally:
            # release() would drain the body to reuse the connection; an unfinished stream must be cut instead.
            if response.content.at_eof():
                response.release()
            else:
                response.close()

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
