"""The Anthropic provider against a fake Messages API replaying recorded-shape transcripts."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from app.settings import Settings
from bench.fake_upstream import FakeUpstream
from tests.support.client import assert_well_formed, post_stream
from tests.support.servers import running_proxy

pytestmark = pytest.mark.anyio

USER: Any = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
MODELS = ("anthropic_text", "anthropic_thinking", "anthropic_tool_use", "anthropic_error", "status?code=529")


@pytest.fixture(scope="module")
def base(upstream: FakeUpstream) -> Iterator[str]:
    settings = Settings.model_validate(
        {
            "providers": {
                "claude": {"type": "anthropic", "base_url": f"http://127.0.0.1:{upstream.port}", "api_key": "sk-ant-k"}
            },
            "models": {m: {"provider": "claude", "model": m} for m in MODELS},
            "default_model": MODELS[0],
            "routing": {"attempts_per_target": 1},
        }
    )
    with running_proxy(settings) as url:
        yield url


async def test_text_stream(base: str, upstream: FakeUpstream) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        result = await post_stream(client, base, {"model": "anthropic_text", "messages": USER, "max_tokens": 50})
    assert_well_formed(result)
    assert result.text() == "Hello! 😀 中文\nbye"
    assert result.data(-1) == {
        "finish_reason": "stop",
        "usage": {"prompt_tokens": 25, "completion_tokens": 15, "total_tokens": 40},
        "usage_source": "provider",
    }
    sent = upstream.records_for("anthropic_text")[-1]
    assert sent.headers["x-api-key"] == "sk-ant-k"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body["system"] == "Be brief."
    assert sent.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert (sent.body["max_tokens"], sent.body["stream"]) == (50, True)


async def test_thinking_becomes_reasoning_and_max_tokens_becomes_length(base: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        result = await post_stream(client, base, {"model": "anthropic_thinking", "messages": USER})
    assert_well_formed(result)
    reasoning = "".join(json.loads(e.data)["text"] for e in result.events if e.type == "reasoning")
    assert reasoning == "Let me think."
    assert result.text() == "The answer is"
    assert result.data(-1)["finish_reason"] == "length"


async def test_tool_use_becomes_tool_call_deltas(base: str) -> None:
    async with AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(model="anthropic_tool_use", messages=USER, stream=True)
        calls: dict[int, dict[str, str]] = {}
        text, finish = "", None
        async for chunk in stream:
            delta = chunk.choices[0].delta
            text += delta.content or ""
            for part in delta.tool_calls or ():
                call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
                call["id"] += part.id or ""
                call["name"] += (part.function and part.function.name) or ""
                call["arguments"] += (part.function and part.function.arguments) or ""
            finish = chunk.choices[0].finish_reason or finish
    assert text == "Let me check."
    assert {i: (c["id"], c["name"], json.loads(c["arguments"])) for i, c in calls.items()} == {
        0: ("toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather", {"location": "Paris"}),
        1: ("toolu_02A", "get_time", {"tz": "CET"}),
    }
    assert finish == "tool_calls"


async def test_mid_stream_error_event_is_a_retryable_error_frame(base: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        result = await post_stream(client, base, {"model": "anthropic_error", "messages": USER})
    assert_well_formed(result)
    assert result.text() == "Partial"
    error = result.data(-1)
    assert (error["code"], error["retryable"]) == ("upstream_error", True)
    assert "Overloaded" in error["message"]


async def test_overloaded_before_the_stream_is_a_502(base: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{base}/chat/stream", json={"model": "status?code=529", "messages": USER})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unavailable"
