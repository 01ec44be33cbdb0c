"""Opening a stream's upstream: the route's targets in order, each with its retries, until one produces a first
delta. Retries and fallbacks happen only before the first delta, and never once the client was promised a target
(a keep-alive fell due while it waited, and the 200 went out): no second upstream may answer then."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import replace

from app.errors import ProxyError, UpstreamError
from providers.base import ChatRequest, Delta
from providers.registry import Route, Target
from providers.retry import RetryPolicy

logger = logging.getLogger("tokenrelay.stream")

# The first delta of a target's stream (a caller may commit to that target while it waits for it).
FirstDelta = Callable[[Target, AsyncGenerator[Delta, None]], Awaitable[Delta]]


async def open_upstream(
    route: Route,
    request: ChatRequest,
    policy: RetryPolicy,
    upstream: AsyncExitStack,
    *,
    first_delta: FirstDelta,
    committed: Callable[[], bool],
    stream_id: str,
) -> tuple[Target, AsyncGenerator[Delta, None], Delta]:
    """The target that answered, its deltas and the first of them; its response is closed with `upstream`. Raises
    the last attempt's `ProxyError` when none answered."""
    error: ProxyError = UpstreamError("the model has no targets")
    for target in route.targets:
        attempt_request = replace(request, model=target.upstream_model, timeouts=target.timeouts)
        for attempt in range(policy.attempts_per_target):
            attempt_stack = AsyncExitStack()
            try:
                deltas = await attempt_stack.enter_async_context(target.provider.stream(attempt_request))
                first = await first_delta(target, deltas)
            except ProxyError as failure:
                await attempt_stack.aclose()
                if committed():
                    raise
                error = failure
                delay = policy.retry_delay(failure, attempt)
                logger.warning(
                    "upstream attempt failed stream=%s provider=%s model=%s code=%s retry_in=%s: %s",
                    stream_id, target.provider_name, target.upstream_model, failure.code,
                    "-" if delay is None else f"{delay:.3f}", failure.message,
                )  # fmt: skip
                if delay is None:
                    break
                await asyncio.sleep(delay)
            except BaseException:
                await attempt_stack.aclose()
                raise
            else:
                upstream.push_async_exit(attempt_stack)
                return target, deltas, first
        if not policy.falls_back(error):
            break
    raise error


async def first_of(deltas: AsyncGenerator[Delta, None]) -> Delta:
    try:
        return await anext(deltas)
    except StopAsyncIteration:
        raise UpstreamError("the upstream ended the stream before sending anything") from None
