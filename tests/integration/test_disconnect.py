"""A client that leaves at any moment makes the proxy hang up on the upstream at once, and clean up once.

Measured from just before the client closes its socket to the moment the fake upstream sees its own connection
closed; both clocks are this process's monotonic clock.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import pytest

from bench.fake_upstream import FakeUpstream, RequestRecord
from tests.support.logs import RecordCollector
from tests.support.servers import proxy_settings, running_proxy
from tests.support.whatwg_sse import WhatwgParser

pytestmark = pytest.mark.anyio

HANG_UP_WITHIN = 0.1
USER = [{"role": "user", "content": "hi"}]


@asynccontextmanager
async def open_stream(
    base: str, model: str, request_id: str, path: str = "/chat/stream"
) -> AsyncIterator[httpx.Response]:
    async with httpx.AsyncClient(timeout=10) as client:
        body = (
            {"model": model, "messages": USER, "stream": True}
            if path.startswith("/v1")
            else {"model": model, "messages": USER}
        )
        headers = {"X-Request-ID": request_id}
        async with client.stream("POST", f"{base}{path}", json=body, headers=headers) as response:
            yield response


async def read_until_bytes(response: httpx.Response, marker: bytes) -> AsyncIterator[bytes]:
    """Read until `marker` has arrived; return the body iterator (see `read_until`)."""
    seen = b""
    chunks = response.aiter_raw()
    while marker not in seen:
        seen += await chunks.__anext__()
    return chunks


async def read_until(response: httpx.Response, kind: str) -> AsyncIterator[bytes]:
    """Read until a `kind` frame, and return the body iterator, which the caller must keep referenced.

    Abandoning httpx's iterator closes the connection (its generator finalizer does), which would be the
    client leaving early; keeping it lets a test hold a connection open without reading.
    """
    parser = WhatwgParser()
    chunks = response.aiter_raw()
    while True:
        chunk = await chunks.__anext__()
        if any(e.type == kind for e in parser.feed(chunk)):
            return chunks


async def upstream_request(upstream: FakeUpstream, model: str) -> RequestRecord:
    return await anyio.to_thread.run_sync(upstream.wait_for_request, model)


async def assert_hung_up(record: RequestRecord, left_at: float) -> None:
    assert await anyio.to_thread.run_sync(record.closed.wait, 5), "the upstream connection was never closed"
    assert record.closed_at is not None
    assert record.closed_at - left_at < HANG_UP_WITHIN, f"hung up after {record.closed_at - left_at:.3f} s"
    assert record.finished_at is None


def assert_cleaned_up_once(logs: RecordCollector, request_id: str) -> None:
    ends = logs.messages("stream end id=")
    mine = [m for m in ends if f"request_id={request_id} " in m]
    assert len(mine) == 1, mine
    assert "outcome=disconnected" in mine[0]


async def test_leaving_while_the_upstream_has_not_answered(upstream: FakeUpstream, logs: RecordCollector) -> None:
    model = "slow_headers?delay_ms=5000"
    with running_proxy(proxy_settings(upstream, model)) as base:
        async with httpx.AsyncClient(timeout=10) as client:

            async def request() -> None:
                body = {"model": model, "messages": USER}
                await client.post(f"{base}/chat/stream", json=body, headers={"X-Request-ID": "leave-early"})

            # The proxy sends nothing until the upstream answers; the client gives up while it waits.
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(request)
                record = await upstream_request(upstream, model)
                left_at = time.monotonic()
                tasks.cancel_scope.cancel()
        await assert_hung_up(record, left_at)
    assert_cleaned_up_once(logs, "leave-early")


@pytest.mark.parametrize(
    ("model", "read_to", "request_id"),
    [
        ("gen?n=3&first_ms=5000", "start", "leave-before-first-token"),
        ("gen?n=1000&gap_ms=20", "token", "leave-mid-stream"),
    ],
)
async def test_leaving_after_the_stream_started(
    upstream: FakeUpstream, logs: RecordCollector, model: str, read_to: str, request_id: str
) -> None:
    """Before the first token (the proxy waits on the upstream) and mid-stream (between two tokens).

    With no delta yet, `start` goes out when the first keep-alive falls due (0.3 s here).
    """
    with running_proxy(proxy_settings(upstream, model, ping_interval=0.3)) as base:
        async with open_stream(base, model, request_id) as response:
            body = await read_until(response, read_to)
            record = await upstream_request(upstream, model)
            left_at = time.monotonic()
            del body
        await assert_hung_up(record, left_at)
    assert_cleaned_up_once(logs, request_id)


async def test_leaving_while_the_proxy_is_blocked_writing(upstream: FakeUpstream, logs: RecordCollector) -> None:
    """The client stops reading: the proxy's writes block, then its reads upstream; then the client leaves."""
    model = "gen?n=200000&pad=1000"
    with running_proxy(proxy_settings(upstream, model)) as base:
        async with open_stream(base, model, "leave-while-blocked") as response:
            body = await read_until(response, "token")
            record = await upstream_request(upstream, model)
            assert await anyio.to_thread.run_sync(record.backpressured.wait, 10), "the proxy never blocked"
            left_at = time.monotonic()
            del body
        await assert_hung_up(record, left_at)
    assert_cleaned_up_once(logs, "leave-while-blocked")


async def test_leaving_the_openai_stream_mid_answer(upstream: FakeUpstream, logs: RecordCollector) -> None:
    model = "gen?n=1000&gap_ms=20"
    with running_proxy(proxy_settings(upstream, model)) as base:
        async with open_stream(base, model, "leave-v1", path="/v1/chat/completions") as response:
            body = await read_until_bytes(response, b'"content":" t1"')
            record = await upstream_request(upstream, model)
            left_at = time.monotonic()
            del body
        await assert_hung_up(record, left_at)
    assert_cleaned_up_once(logs, "leave-v1")
