"""What one stream may make the proxy hold is bounded: an upstream that never ends a line, and a non-stream
answer too large to collect, end in `upstream_error` with the upstream closed, instead of growing memory."""

from __future__ import annotations

import anyio
import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from tests.support.client import assert_well_formed, post_stream
from tests.support.servers import proxy_settings, running_proxy

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "hi"}]
ENDLESS_FIRST = "endless?after=0"
ENDLESS_LATER = "endless?after=3"
HUGE = "gen?n=40&pad=450000"  # 18 MB of answer, in events well under the decoder's 1 MiB


@pytest.fixture(scope="module")
def base(upstream: FakeUpstream) -> object:
    with running_proxy(proxy_settings(upstream, ENDLESS_FIRST, ENDLESS_LATER, HUGE)) as url:
        yield url


async def test_a_line_that_never_ends_before_the_first_token_is_a_502(base: str, upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{base}/chat/stream", json={"model": ENDLESS_FIRST, "messages": USER})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_error"
    assert "over 1048576 bytes" in response.json()["error"]["message"]
    record = upstream.records_for(ENDLESS_FIRST)[-1]
    assert await anyio.to_thread.run_sync(record.closed.wait, 5), "the upstream connection was left open"


async def test_a_line_that_never_ends_mid_stream_is_an_error_frame(base: str, upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        result = await post_stream(client, base, {"model": ENDLESS_LATER, "messages": USER})
    assert result.status == 200
    assert_well_formed(result)
    assert result.text() == " t0 t1 t2"
    assert result.kinds[-1] == "error"
    assert result.data(-1)["code"] == "upstream_error"
    record = upstream.records_for(ENDLESS_LATER)[-1]
    assert await anyio.to_thread.run_sync(record.closed.wait, 5), "the upstream connection was left open"


async def test_a_non_stream_answer_too_large_to_collect_is_a_502(base: str) -> None:
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{base}/v1/chat/completions", json={"model": HUGE, "messages": USER})
    assert response.status_code == 502
    error = response.json()["error"]
    assert error["code"] == "upstream_error"
    assert "stream: true" in error["message"]
