"""Rate limits over real HTTP, with the in-process store and with a real redis-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx
import pytest

from app.backends.memory import MemoryBackend
from app.limits import Limiter
from app.settings import AuthSettings, EchoProviderSettings, LimitSettings
from bench.fake_upstream import FakeUpstream
from tests.support.client import post_stream
from tests.support.logs import RecordCollector
from tests.support.redis_server import RedisServer
from tests.support.servers import proxy_settings, running_proxy

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "hi"}]


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, redis_server: RedisServer) -> str:
    return "" if request.param == "memory" else redis_server.url


def settings_for(store: str, upstream: FakeUpstream | None = None, *models: str, **limits: Any) -> Any:
    settings = proxy_settings(upstream, *models, limits=limits, redis_url=store)
    # Each test its own keys in the shared Redis; clients "behind proxies" (X-Forwarded-For) are not loopback.
    return settings.model_copy(
        update={
            "state": settings.state.model_copy(update={"key_prefix": f"t-{uuid.uuid4().hex}:"}),
            "auth": AuthSettings(open=True),
        }
    )


async def test_requests_per_minute_with_headers(store: str) -> None:
    with running_proxy(settings_for(store, requests_per_minute=3)) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            responses = [await client.post(f"{base}/chat/stream", json={"prompt": "hi"}) for _ in range(4)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429]
    assert [r.headers["x-ratelimit-remaining"] for r in responses] == ["2", "1", "0", "0"]
    assert all(r.headers["x-ratelimit-limit"] == "3" for r in responses)
    refused = responses[-1]
    assert refused.headers["content-type"] == "application/json"
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 20
    assert int(refused.headers["x-ratelimit-reset"]) > 0
    assert responses[0].headers["content-type"].startswith("text/event-stream")


async def test_concurrent_streams_lease_is_released_on_done_error_and_disconnect(
    store: str, upstream: FakeUpstream
) -> None:
    slow, failing = "gen?n=50&gap_ms=20", "cutoff?n=1&mode=abrupt"
    with running_proxy(settings_for(store, upstream, slow, failing, concurrent_streams=1)) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            # done, then error: each stream gives its lease back, so the next one is admitted.
            assert (await post_stream(client, base, {"messages": USER})).kinds[-1] == "done"
            assert (await post_stream(client, base, {"model": failing, "messages": USER})).kinds[-1] == "error"
            # disconnect: while one stream is open a second is refused; after the client leaves, admitted.
            async with client.stream("POST", f"{base}/chat/stream", json={"model": slow, "messages": USER}) as open_:
                chunks = open_.aiter_raw()
                await chunks.__anext__()
                second = await client.post(f"{base}/chat/stream", json={"messages": USER})
                assert second.status_code == 429
                assert "open streams" in second.json()["error"]["message"]
                del chunks
        # The lease is given back when the proxy notices the client left; it is asked again until then (bounded).
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(100):
                again = await client.post(f"{base}/chat/stream", json={"messages": USER})
                if again.status_code == 200:
                    break
                await asyncio.sleep(0.01)
            assert again.status_code == 200


async def test_tokens_per_minute_reserve_and_settle(store: str) -> None:
    """A reservation of prompt + max_tokens is settled to the real (small) usage, so later requests fit."""
    with running_proxy(settings_for(store, tokens_per_minute=1000)) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            big = {"prompt": "hi", "max_tokens": 900}
            first = await client.post(f"{base}/chat/stream", json=big)
            second = await client.post(f"{base}/chat/stream", json=big)
            too_big = await client.post(f"{base}/chat/stream", json={"prompt": "hi", "max_tokens": 5000})
    assert first.status_code == 200
    assert second.status_code == 200, "the first reservation was not settled to its real usage"
    assert too_big.status_code == 429
    assert "tokens per minute" in too_big.json()["error"]["message"]


async def test_x_forwarded_for_only_from_trusted_proxies(store: str) -> None:
    trusted = settings_for(store, requests_per_minute=1, trusted_proxies=["127.0.0.1"])
    with running_proxy(trusted) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            a = await client.post(f"{base}/chat/stream", json={"prompt": "x"}, headers={"X-Forwarded-For": "10.0.0.1"})
            b = await client.post(f"{base}/chat/stream", json={"prompt": "x"}, headers={"X-Forwarded-For": "10.0.0.2"})
    assert (a.status_code, b.status_code) == (200, 200)  # two clients behind a trusted proxy

    untrusted = settings_for(store, requests_per_minute=1)
    with running_proxy(untrusted) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            a = await client.post(f"{base}/chat/stream", json={"prompt": "x"}, headers={"X-Forwarded-For": "10.0.0.1"})
            b = await client.post(f"{base}/chat/stream", json={"prompt": "x"}, headers={"X-Forwarded-For": "10.0.0.2"})
    assert (a.status_code, b.status_code) == (200, 429)  # a forged header does not make a new principal


async def test_sessions_never_multiply_an_address_s_limits() -> None:
    """Regression: with auth off, each anonymous session was its own principal, so one address could mint sessions
    and open its stream limit once per session."""
    limits = {"requests_per_minute": 0, "concurrent_streams": 2}
    settings = proxy_settings(limits=limits).model_copy(
        update={"providers": {"echo": EchoProviderSettings(type="echo", tokens_per_second=2, first_token_delay_ms=0)}}
    )
    with running_proxy(settings) as base:
        async with AsyncExitStack() as stack:
            browsers = [await stack.enter_async_context(httpx.AsyncClient(timeout=10)) for _ in range(3)]
            statuses = []
            for browser in browsers:
                assert (await browser.post(f"{base}/auth/session")).status_code == 200
                for _ in range(2):
                    request = browser.build_request("GET", f"{base}/chat/stream", params={"prompt": "a b c d e f"})
                    response = await stack.enter_async_context(_streaming(browser, request))
                    statuses.append(response.status_code)
    assert statuses == [200, 200, 429, 429, 429, 429], "three sessions of one address share its two streams"


@asynccontextmanager
async def _streaming(client: httpx.AsyncClient, request: httpx.Request) -> AsyncIterator[httpx.Response]:
    response = await client.send(request, stream=True)
    try:
        yield response
    finally:
        await response.aclose()


async def test_the_open_streams_429_carries_that_limit_s_headers_and_names_it_in_the_log(
    store: str, upstream: FakeUpstream, logs: RecordCollector
) -> None:
    slow = "gen?n=50&gap_ms=20"
    settings = settings_for(store, upstream, slow, requests_per_minute=100, concurrent_streams=1)
    with running_proxy(settings) as base:
        async with (
            httpx.AsyncClient(timeout=10) as client,
            client.stream("POST", f"{base}/chat/stream", json={"model": slow, "messages": USER}) as held,
        ):
            chunks = held.aiter_raw()
            await chunks.__anext__()  # the stream is open and holds the only lease
            refused = await client.post(f"{base}/chat/stream", json={"messages": USER})
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-limit"] == "1"  # the open-streams limit, not the request rate's 100
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) < settings.limits.lease_ttl_seconds
    assert any("limit=concurrent_streams (1)" in m for m in logs.messages("admission refused"))


def test_the_open_streams_wait_is_estimated_from_how_long_streams_last() -> None:
    limiter = Limiter(LimitSettings(), MemoryBackend())
    assert limiter.expected_wait(4) == 1.0  # nothing measured yet
    for _ in range(50):
        limiter.stream_lasted(12.0)
    assert limiter.expected_wait(4) == pytest.approx(3.0)  # the first of four 12 s streams ends after ~3 s
    assert limiter.expected_wait(1) == pytest.approx(12.0)
    assert limiter.expected_wait(100) == 1.0


async def test_a_stream_longer_than_its_lease_ttl_still_counts(store: str, upstream: FakeUpstream) -> None:
    """The heartbeat keeps an open stream's lease: past two TTLs of running, a second stream is still refused."""
    ttl = 1.5  # beats every 0.5 s: a whole second of slack on a busy machine
    slow = "gen?n=400&gap_ms=10"  # about 4 s
    settings = settings_for(store, upstream, slow, requests_per_minute=0, concurrent_streams=1, lease_ttl_seconds=ttl)
    with running_proxy(settings) as base:
        async with (
            httpx.AsyncClient(timeout=10) as client,
            client.stream("POST", f"{base}/chat/stream", json={"model": slow, "messages": USER}) as held,
        ):
            chunks = held.aiter_raw()
            await chunks.__anext__()
            await asyncio.sleep(2 * ttl + 0.2)  # the passing of time is what is under test
            refused = await client.post(f"{base}/chat/stream", json={"messages": USER})
            assert b"event: done" not in b"".join([c async for c in _first_chunks(chunks, 1)])
        after = await until_admitted(base)
    assert refused.status_code == 429, "a stream running past its lease TTL stopped counting"
    assert after == 200, "the lease outlived its stream"


async def _first_chunks(chunks: AsyncIterator[bytes], count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield await chunks.__anext__()


async def until_admitted(base: str) -> int:
    """The lease is given back once the proxy notices the client left: ask until then (bounded)."""
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(100):
            status = (await client.post(f"{base}/chat/stream", json={"messages": USER})).status_code
            if status != 429:
                break
            await asyncio.sleep(0.02)
        return status
