"""`/chat/stream` over real HTTP against the fake OpenAI upstream: frames, phases, headers."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from urllib.parse import quote

import httpx
import pytest

from app.settings import Timeouts
from bench.fake_upstream import FakeUpstream
from tests.support.client import assert_well_formed, get_stream, post_stream
from tests.support.servers import proxy_settings, running_proxy
from tests.support.whatwg_sse import WhatwgParser

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "hi"}]


async def test_echo_get_and_post_stream_a_deterministic_reply() -> None:
    with running_proxy(proxy_settings()) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            got = await get_stream(client, base, {"prompt": "héllo wörld 😀 中文"})
            posted = await post_stream(client, base, {"messages": [{"role": "user", "content": "a b"}]})
    assert got.status == 200
    assert_well_formed(got)
    assert got.text() == "Echo: héllo wörld 😀 中文"
    assert got.data(-1)["finish_reason"] == "stop"
    assert posted.text() == "Echo: a b"
    assert posted.data(0)["model"] == "echo"
    assert posted.data(0)["provider"] == "echo"


async def test_first_token_arrives_before_the_upstream_finishes(upstream: FakeUpstream) -> None:
    model = "gen?n=5&gap_ms=200"
    with running_proxy(proxy_settings(upstream, model)) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            body = {"model": model, "messages": USER}
            async with client.stream("POST", f"{base}/chat/stream", json=body) as response:
                parser = WhatwgParser()
                async for chunk in response.aiter_raw():
                    if any(e.type == "token" for e in parser.feed(chunk)):
                        break
                record = upstream.records_for(model)[-1]
                assert record.finished_at is None, "the whole answer was buffered before the first token"


@pytest.mark.parametrize(
    ("transcript", "kinds", "check"),
    [
        ("text", ["start", "token", "done"], "text"),
        ("reasoning", ["start", "reasoning", "token", "done"], "reasoning"),
        ("tool_calls", ["start", "tool_call", "done"], "tools"),
    ],
)
async def test_recorded_transcripts_become_frames(
    upstream: FakeUpstream, transcript: str, kinds: list[str], check: str
) -> None:
    model = f"{transcript}?gap_ms=2"
    with running_proxy(proxy_settings(upstream, model)) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            result = await post_stream(client, base, {"model": model, "messages": USER})
    assert result.status == 200
    assert_well_formed(result)
    # Deltas read together may share a frame, so runs of one kind are compared, not frame counts.
    assert [k for i, k in enumerate(result.kinds) if i == 0 or result.kinds[i - 1] != k] == kinds
    done = result.data(-1)
    assert done["usage_source"] == "provider"
    if check == "text":
        assert result.text() == "Hello! How can I help you today? 😀 中文\n\nline\r\nbreak"
        assert done == {
            "finish_reason": "stop",
            "usage": {"prompt_tokens": 9, "completion_tokens": 14, "total_tokens": 23},
            "usage_source": "provider",
        }
    elif check == "reasoning":
        reasoning = "".join(json.loads(e.data)["text"] for e in result.events if e.type == "reasoning")
        assert reasoning == "Let me think."
        assert result.text() == "The answer is 4."
    else:
        calls: dict[int, dict[str, str]] = {}
        for event in result.events:
            if event.type == "tool_call":
                part = json.loads(event.data)
                call = calls.setdefault(part["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] += part["id"] or ""
                call["name"] += part["name"] or ""
                call["arguments"] += part["arguments"]
        assert calls == {
            0: {"id": "call_abc123", "name": "get_weather", "arguments": '{"location": "Paris"}'},
            1: {"id": "call_def456", "name": "get_time", "arguments": '{"tz": "CET"}'},
        }
        assert json.loads(calls[0]["arguments"]) == {"location": "Paris"}
        assert done["finish_reason"] == "tool_calls"


async def test_tokens_read_together_are_merged_into_fewer_frames(upstream: FakeUpstream) -> None:
    """The fake upstream writes 16 events per TCP write: 64 tokens arrive in a handful of reads, and each read's
    tokens leave as one frame (a frame per token would be 64)."""
    model = "gen?n=64"
    with running_proxy(proxy_settings(upstream, model, "text")) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            result = await post_stream(client, base, {"model": model, "messages": USER})
            text = await post_stream(client, base, {"model": "text", "messages": USER})
    assert_well_formed(result)
    assert result.text() == "".join(f" t{i}" for i in range(64))
    tokens = result.kinds.count("token")
    assert 1 <= tokens <= 32, f"{tokens} token frames for 64 tokens read 16 at a time"
    assert_well_formed(text)
    assert text.text() == "Hello! How can I help you today? 😀 中文\n\nline\r\nbreak"


async def test_upstream_request_asks_for_usage_and_carries_the_request_id(upstream: FakeUpstream) -> None:
    model = "gen?n=2"
    with running_proxy(proxy_settings(upstream, model)) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            body = {"model": model, "messages": USER, "max_tokens": 5, "temperature": 0.5, "stop": ["x"]}
            headers = {"X-Request-ID": "trace-123"}
            async with client.stream("POST", f"{base}/chat/stream", json=body, headers=headers) as response:
                await response.aread()
    record = upstream.records_for(model)[-1]
    assert record.body["stream_options"] == {"include_usage": True}
    assert record.body["stream"] is True
    assert record.body["max_tokens"] == 5
    assert record.body["stop"] == ["x"]
    assert record.headers["x-request-id"] == "trace-123"
    assert record.headers["authorization"] == "Bearer sk-test-key"
    assert response.headers["x-request-id"] == "trace-123"


async def test_stream_headers(upstream: FakeUpstream) -> None:
    with running_proxy(proxy_settings()) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            headers = {"Accept-Encoding": "gzip, br"}
            async with client.stream("GET", f"{base}/chat/stream?prompt=x", headers=headers) as response:
                await response.aread()
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.headers["cache-control"] == "no-cache, no-transform"
    assert response.headers["x-accel-buffering"] == "no"
    assert len(response.headers["x-request-id"]) >= 16
    assert "connection" not in response.headers
    assert "content-encoding" not in response.headers
    assert "content-length" not in response.headers


async def test_pings_cover_the_wait_for_the_first_token(upstream: FakeUpstream) -> None:
    """The upstream answered but its first token is 10 s away: pings keep the silence covered, each after a full
    interval of silence. Awaited pings, and a lower bound only causality sets (the commit itself waits one
    interval, then each ping one more), so a busy machine cannot break it."""
    model = "gen?n=2&first_ms=10000"
    interval = 0.2
    with running_proxy(proxy_settings(upstream, model, ping_interval=interval)) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            parser = WhatwgParser()
            sent = time.monotonic()
            async with client.stream("POST", f"{base}/chat/stream", json={"model": model, "messages": USER}) as r:
                async with asyncio.timeout(5):
                    async for chunk in r.aiter_raw():
                        parser.feed(chunk)
                        if parser.result.comments.count("ping") >= 3:
                            break
                elapsed = time.monotonic() - sent
    assert [e.type for e in parser.result.events] == ["start"], "a token came before the pings"
    assert parser.result.comments == ["ping", "ping", "ping"]
    assert elapsed >= 3.5 * interval, f"three pings within {elapsed:.2f} s: they do not wait for silence"


async def test_no_ping_while_tokens_flow(upstream: FakeUpstream) -> None:
    model = "gen?n=20&gap_ms=20"
    with running_proxy(proxy_settings(upstream, model, ping_interval=0.2)) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            result = await post_stream(client, base, {"model": model, "messages": USER})
    assert_well_formed(result)
    assert result.parsed.comments == []


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("status?code=401", 502, "upstream_error"),
        ("status?code=403", 502, "upstream_error"),
        ("status?code=404", 404, "model_not_found"),
        ("status?code=400", 400, "invalid_request"),
        ("status?code=500", 502, "upstream_unavailable"),
        ("status?code=503", 502, "upstream_unavailable"),
        ("status?code=429&retry_after=7", 429, "upstream_rate_limited"),
    ],
)
async def test_upstream_status_before_the_stream_is_an_http_error(
    upstream: FakeUpstream, model: str, status: int, code: str
) -> None:
    with running_proxy(proxy_settings(upstream, model)) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{base}/chat/stream", json={"model": model, "messages": USER})
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    if status == 502 and code == "upstream_error":
        # A credentials refusal is explained without echoing the upstream's text, which can quote the key.
        assert "credentials" in error["message"]
        assert "fake upstream error" not in error["message"]
    else:
        assert "fake upstream error" in error["message"]
    if status == 429:
        assert response.headers["retry-after"] == "7"


async def test_an_upstream_retry_after_given_as_an_http_date_reaches_the_client(upstream: FakeUpstream) -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=40), usegmt=True)
    model = f"status?code=429&retry_after={quote(when)}"
    with running_proxy(proxy_settings(upstream, model)) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{base}/chat/stream", json={"model": model, "messages": USER})
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "upstream_rate_limited"
    assert 35 <= int(response.headers["retry-after"]) <= 41, response.headers["retry-after"]


async def test_refused_connection_is_502() -> None:
    closed = _closed_port()
    settings = proxy_settings(None, "any", base_url=f"http://127.0.0.1:{closed}/v1")
    with running_proxy(settings) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{base}/chat/stream", json={"model": "any", "messages": USER})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"


async def test_no_response_headers_within_first_byte_timeout_is_504(upstream: FakeUpstream) -> None:
    model = "slow_headers?delay_ms=3000"
    timeouts = Timeouts(connect=1, first_byte=0.3, read=5, pool=1)
    with running_proxy(proxy_settings(upstream, model, timeouts=timeouts)) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{base}/chat/stream", json={"model": model, "messages": USER})
    assert response.status_code == 504
    assert response.json()["error"]["code"] == "upstream_timeout"


@pytest.mark.parametrize(
    ("model", "code", "tokens_before"),
    [
        ("error_chunk", "upstream_error", "Partial answer"),
        ("cutoff?n=3&mode=clean", "upstream_error", " t0 t1 t2"),
        ("cutoff?n=3&mode=abrupt", "upstream_error", " t0 t1 t2"),
        ("stall?n=3", "upstream_timeout", " t0 t1 t2"),
    ],
)
async def test_failures_after_the_first_token_end_with_an_error_frame(
    upstream: FakeUpstream, model: str, code: str, tokens_before: str
) -> None:
    timeouts = Timeouts(connect=1, first_byte=2, read=0.3, pool=1)
    with running_proxy(proxy_settings(upstream, model, timeouts=timeouts)) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            result = await post_stream(client, base, {"model": model, "messages": USER})
    assert result.status == 200
    assert_well_formed(result)
    assert result.kinds[-1] == "error"
    error = result.data(-1)
    assert error["code"] == code
    assert error["retryable"] is True
    assert error["request_id"] == result.headers["x-request-id"]
    assert result.text() == tokens_before


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])
