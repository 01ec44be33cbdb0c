"""Opening a stream's upstream: the route's targets in order, each with its retries, until one produces a first
delta. Retries and fallbacks happen only before the first delta, and never once the client was promised a target
(a keep-alive fell due while it waited, and the 200 went out): no second upstream may answer then."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager

import msgspec

from app.errors import ProxyError, UpstreamError
from providers.base import ChatRequest, Delta
from providers.registry import Route, Target
from providers.retry import RetryPolicy

logger = logging.getLogger("tokenrelay.stream")

# The first delta of a target's stream (a caller may commit to that target while it waits for it).
FirstDelta = Callable[[Target, AsyncGenerator[Delta, None]], Awaitable[Delta]]


class UpstreamOpening:
    """The route's targets tried in order until one answers; `aclose()` closes the answering one's response.

    A class with two methods rather than an `AsyncExitStack` per attempt: this lives as long as its stream, and a
    stack's deque alone is 760 bytes of each open stream."""

    __slots__ = ("_committed", "_first_delta", "_policy", "_request", "_response", "_route", "_stream_id")

    def __init__(
        self,
        route: Route,
        request: ChatRequest,
        policy: RetryPolicy,
        *,
        first_delta: FirstDelta,
        committed: Callable[[], bool],
        stream_id: str,
    ) -> None:
        self._route = route
        self._request = request
        self._policy = policy
        self._first_delta = first_delta
        self._committed = committed
        self._stream_id = stream_id
        self._response: AbstractAsyncContextManager[AsyncGenerator[Delta, None]] | None = None

    async def open(self) -> tuple[Target, AsyncGenerator[Delta, None], Delta]:
        """The target that answered, its deltas and the first of them. Raises the last attempt's `ProxyError`
        when none answered."""
        policy = self._policy
        error: ProxyError | None = None
        for target in self._route.targets:
            attempt_request = msgspec.structs.replace(
                self._request, model=target.upstream_model, timeouts=target.timeouts
            )
            for attempt in range(policy.attempts_per_target):
                response = target.provider.stream(attempt_request)
                try:
                    deltas = await response.__aenter__()
                except ProxyError as failure:
                    error, delay = failure, self._failed(failure, attempt, target)
                else:
                    try:
                        first = await self._first_delta(target, deltas)
                    except ProxyError as failure:
                        await response.__aexit__(None, None, None)
                        error, delay = failure, self._failed(failure, attempt, target)
                    except BaseException:
                        await response.__aexit__(None, None, None)
                        raise
                    else:
                        self._response = response
                        return target, deltas, first
                if delay is None:
                    break
                await asyncio.sleep(delay)
            if error is not None and not policy.falls_back(error):
                break
        raise error or UpstreamError("the model has no targets")

    def _failed(self, failure: ProxyError, attempt: int, target: Target) -> float | None:
        """Log a failed attempt; the delay before the next one (None: no more attempts at this target)."""
        if self._committed():
            raise failure
        delay = self._policy.retry_delay(failure, attempt)
        logger.warning(
            "upstream attempt failed stream=%s provider=%s model=%s code=%s retry_in=%s: %s",
            self._stream_id, target.provider_name, target.upstream_model, failure.code,
            "-" if delay is None else f"{delay:.3f}", failure.message,
        )  # fmt: skip
        return delay

    async def aclose(self) -> None:
        response, self._response = self._response, None
        if response is not None:
            await response.__aexit__(None, None, None)


async def first_of(deltas: AsyncGenerator[Delta, None]) -> Delta:
    try:
        return await anext(deltas)
    except StopAsyncIteration:
        raise UpstreamError("the upstream ended the stream before sending anything") from None
