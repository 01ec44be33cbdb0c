"""`HttpStream`: a provider's stream over HTTP as one `async with` object: the request sent, an answer other than
200 raised as the provider's error, else the deltas of its body; the response closed on exit.

An object rather than an `@asynccontextmanager` generator: it lives as long as its stream, and a generator's
frame and its context manager would be part of each open stream's memory, and of each request's CPU.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from contextlib import AbstractAsyncContextManager
from types import TracebackType

from providers.base import Delta
from providers.http_client import UpstreamResponse
from providers.upstream_errors import UpstreamErrors


class HttpStream:
    __slots__ = ("_deltas", "_errors", "_exchange", "_model")

    def __init__(
        self,
        exchange: AbstractAsyncContextManager[UpstreamResponse],
        deltas: Callable[[UpstreamResponse, UpstreamErrors], AsyncGenerator[Delta, None]],
        errors: UpstreamErrors,
        model: str,
    ) -> None:
        self._exchange = exchange
        self._deltas = deltas  # the body's deltas, in the provider's own format
        self._errors = errors
        self._model = model

    async def __aenter__(self) -> AsyncGenerator[Delta, None]:
        response = await self._exchange.__aenter__()
        if response.status == 200:
            return self._deltas(response, self._errors)
        try:
            raise await self._errors.from_status(response, self._model)
        finally:
            await self._exchange.__aexit__(None, None, None)

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self._exchange.__aexit__(kind, error, traceback)
