"""`HttpClient` on httpx, with its own transport or httpx-aiohttp's: kept to measure against (bench/)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager, asynccontextmanager

import anyio
import httpx

from app.errors import ProxyError, UpstreamError, UpstreamTimeout, UpstreamUnavailable
from providers.base import UpstreamTimeouts
from providers.http_client import ExceptionTable, translate_with, translated

# Most specific first, as httpx's own map_httpcore_exceptions() picks the most specific class.
EXCEPTION_MAP: ExceptionTable = (
    (httpx.ConnectTimeout, UpstreamTimeout, "timed out connecting to the upstream"),
    (httpx.PoolTimeout, UpstreamTimeout, "no free upstream connection within the pool timeout"),
    (httpx.ReadTimeout, UpstreamTimeout, "the upstream went silent for longer than the read timeout"),
    (httpx.WriteTimeout, UpstreamTimeout, "timed out sending the request upstream"),
    (httpx.TimeoutException, UpstreamTimeout, "the upstream timed out"),
    (httpx.ConnectError, UpstreamUnavailable, "cannot connect to the upstream"),
    (
        httpx.RemoteProtocolError,
        UpstreamError,
        "the upstream broke the HTTP protocol or cut the response off",
    ),
    (httpx.ReadError, UpstreamError, "reading from the upstream failed"),
    (httpx.WriteError, UpstreamUnavailable, "sending the request upstream failed"),
    (httpx.ProxyError, UpstreamUnavailable, "the outbound HTTP proxy failed"),
    (httpx.UnsupportedProtocol, UpstreamUnavailable, "the upstream URL has an unsupported scheme"),
    (httpx.InvalidURL, UpstreamUnavailable, "the upstream URL is invalid"),
    (httpx.DecodingError, UpstreamError, "the upstream response could not be decoded"),
    (httpx.TooManyRedirects, UpstreamError, "the upstream redirected too many times"),
    (httpx.TransportError, UpstreamError, "the upstream request failed"),
    (httpx.HTTPError, UpstreamError, "the upstream request failed"),
    (httpx.StreamError, UpstreamError, "the upstream response stream failed"),
    (httpx.CookieConflict, UpstreamError, "the upstream set conflicting cookies"),
)


def translate(exc: BaseException) -> ProxyError | None:
    return translate_with(EXCEPTION_MAP, exc)


def _translated() -> AbstractContextManager[None]:
    return translated(EXCEPTION_MAP, (httpx.HTTPError, httpx.StreamError, httpx.InvalidURL))


class _Response:
    __slots__ = ("_response",)

    def __init__(self, response: httpx.Response) -> None:
        self._response = response

    @property
    def status(self) -> int:
        return self._response.status_code

    def header(self, name: str) -> str | None:
        value = self._response.headers.get(name)
        return None if value is None else str(value)

    async def chunks(self) -> AsyncIterator[bytes]:
        with _translated():
            async for chunk in self._response.aiter_raw():
                yield chunk

    def end(self) -> None:
        """Nothing to do: the library closes the connection of a response left unread."""

    async def read(self, limit: int) -> bytes:
        body = b""
        with _translated():
            async for chunk in self._response.aiter_raw():
                body += chunk
                if len(body) >= limit:
                    break
        return body[:limit]


class HttpxClient:
    def __init__(self, *, max_connections: int, keepalive_expiry: float = 15.0, via_aiohttp: bool) -> None:
        limits = httpx.Limits(
            max_connections=max_connections,
            max_keepalive_connections=max_connections,
            keepalive_expiry=keepalive_expiry,
        )
        transport: httpx.AsyncBaseTransport
        if via_aiohttp:
            from httpx_aiohttp import AiohttpTransport

            transport = AiohttpTransport(limits=limits)
        else:
            transport = httpx.AsyncHTTPTransport(limits=limits)
        self._client = httpx.AsyncClient(transport=transport, trust_env=False)

    async def open(self) -> None:
        return None  # httpx opens connections on demand and is not bound to a loop

    @asynccontextmanager
    async def post(
        self, url: str, *, headers: Mapping[str, str], body: bytes, timeouts: UpstreamTimeouts
    ) -> AsyncIterator[_Response]:
        # httpx has no separate first-byte timeout: its read timeout bounds each wait, headers included.
        timeout = httpx.Timeout(
            connect=timeouts.connect, read=timeouts.read, write=timeouts.connect, pool=timeouts.pool
        )
        request = self._client.build_request(
            "POST", url, content=body, headers={**headers, "Accept-Encoding": "identity"}, timeout=timeout
        )
        with _translated():
            response = await self._client.send(request, stream=True)
        try:
            yield _Response(response)
        finally:
            # Shielded: after a cancellation every await is cancelled again, and this close must happen.
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def aclose(self) -> None:
        await self._client.aclose()
