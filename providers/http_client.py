"""The narrow HTTP interface providers use upstream, so the client library is a choice, not a dependency.

`post()` is an async context manager: entering it sends the request and waits for the response headers (bounded
by `connect + pool` and `first_byte`); leaving it closes the response, returning the connection to the pool only
when the body was read to the end. Each implementation translates its library's exceptions to `app.errors` in one
function, so providers never see a transport exception.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Literal, Protocol

from app.errors import ProxyError
from providers.base import UpstreamTimeouts

# (exception class of a client library, the error it becomes, what to tell the client), most specific first.
ExceptionTable = tuple[tuple[type[BaseException], type[ProxyError], str], ...]


def translate_with(table: ExceptionTable, exc: BaseException) -> ProxyError | None:
    """The first matching translation of `exc`, keeping the library's own text after ours."""
    for source, target, message in table:
        if isinstance(exc, source):
            return target(f"{message}: {exc}" if str(exc) else message)
    return None


@contextmanager
def translated(table: ExceptionTable, catch: tuple[type[BaseException], ...]) -> Iterator[None]:
    """Raise the `app.errors` translation of any `catch` exception leaving the block."""
    try:
        yield
    except catch as exc:
        mapped = translate_with(table, exc)
        if mapped is None:  # pragma: no cover - every table ends with the library's base classes
            raise
        raise mapped from exc


HttpClientKind = Literal["httptools", "aiohttp", "httpx", "httpx-aiohttp"]


class UpstreamResponse(Protocol):
    @property
    def status(self) -> int: ...

    def header(self, name: str) -> str | None: ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; an idle gap longer than `read` raises `UpstreamTimeout`."""
        ...

    async def read(self, limit: int) -> bytes:
        """At most `limit` bytes of the body (for error responses)."""
        ...

    def end(self) -> None:
        """The stream's own end marker came (`[DONE]`, `message_stop`): all that may still arrive is the body's
        framing, so the connection may go back to the pool once that arrives, instead of being closed."""
        ...


class HttpClient(Protocol):
    async def open(self) -> None:
        """Create the connection pool, inside the serving event loop (application startup)."""
        ...

    def post(
        self, url: str, *, headers: Mapping[str, str], body: bytes, timeouts: UpstreamTimeouts
    ) -> AbstractAsyncContextManager[UpstreamResponse]: ...

    async def aclose(self) -> None:
        """Close every pooled connection (application shutdown)."""
        ...


def build_http_client(kind: HttpClientKind, *, max_connections: int, keepalive_expiry: float = 15.0) -> HttpClient:
    """One pooled client; the caller owns it and closes it with `aclose()`."""
    if kind == "httptools":
        from providers.httptools_client import HttptoolsClient

        return HttptoolsClient(max_connections=max_connections, keepalive_expiry=keepalive_expiry)
    if kind == "aiohttp":
        from providers.aiohttp_client import AiohttpClient

        return AiohttpClient(max_connections=max_connections, keepalive_expiry=keepalive_expiry)
    from providers.httpx_client import HttpxClient

    return HttpxClient(
        max_connections=max_connections, keepalive_expiry=keepalive_expiry, via_aiohttp=kind == "httpx-aiohttp"
    )
