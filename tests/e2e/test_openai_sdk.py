"""The openai Python SDK, unchanged, against tokenrelay's `/v1` over real HTTP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI

from bench.fake_upstream import FakeUpstream
from tests.support.servers import proxy_settings, running_proxy

pytestmark = pytest.mark.anyio

USER: Any = [{"role": "user", "content": "hi"}]
TEXT = "Hello! How can I help you today? 😀 中文\n\nline\r\nbreak"
MODELS = (
    "text",
    "multiline_data",
    "tool_calls",
    "reasoning",
    "error_chunk",
    "gen?n=3&first_ms=600",
    "gen?n=3&gap_ms=200",
    "status?code=429&retry_after=3",
)


@pytest.fixture(scope="module")
def base(upstream: FakeUpstream) -> Iterator[str]:
    with running_proxy(proxy_settings(upstream, *MODELS, ping_interval=0.05)) as url:
        yield url


@pytest.fixture
async def client(base: str) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0) as sdk:
        yield sdk


async def test_streamed_text_equals_the_upstream_text(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="text", messages=USER, stream=True)
    text = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(text) == TEXT


async def test_upstream_events_of_several_data_lines_reach_the_sdk_intact(client: AsyncOpenAI, base: str) -> None:
    """Each upstream chunk's JSON spans several `data:` lines (legal SSE): every line reaches the client as a
    `data:` line of the same event, never as a stray field, so the SDK parses the same chunks."""
    stream = await client.chat.completions.create(model="multiline_data", messages=USER, stream=True)
    text = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(text) == TEXT
    async with httpx.AsyncClient(timeout=10) as raw:
        body = {"model": "multiline_data", "messages": USER, "stream": True}
        response = await raw.post(f"{base}/v1/chat/completions", json=body)
    lines = [line for line in response.text.split("\n") if line]
    assert all(line.startswith(("data: ", ": ")) for line in lines), lines


async def test_tool_call_arguments_reassemble_into_the_exact_json(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(model="tool_calls", messages=USER, stream=True)
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for part in chunk.choices[0].delta.tool_calls or ():
            call = calls.setdefault(part.index, {"id": "", "name": "", "arguments": ""})
            call["id"] += part.id or ""
            call["name"] += (part.function and part.function.name) or ""
            call["arguments"] += (part.function and part.function.arguments) or ""
        finish = chunk.choices[0].finish_reason or finish
    assert calls == {
        0: {"id": "call_abc123", "name": "get_weather", "arguments": '{"location": "Paris"}'},
        1: {"id": "call_def456", "name": "get_time", "arguments": '{"tz": "CET"}'},
    }
    assert json.loads(calls[0]["arguments"]) == {"location": "Paris"}
    assert finish == "tool_calls"


async def test_usage_chunk_only_when_asked(client: AsyncOpenAI) -> None:
    asked = await client.chat.completions.create(
        model="text", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in asked]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (9, 14)

    silent = await client.chat.completions.create(model="text", messages=USER, stream=True)
    chunks = [chunk async for chunk in silent]
    assert all(chunk.choices for chunk in chunks)
    assert all(chunk.usage is None for chunk in chunks)


async def test_usage_chunk_is_made_for_providers_that_send_none(client: AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="echo", messages=USER, stream=True, stream_options={"include_usage": True}
    )
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Echo: hi"
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 2


@pytest.mark.parametrize("extra", [{}, {"resumable": True}], ids=["plain", "resumable"])
async def test_mid_stream_upstream_error_raises_api_error(client: AsyncOpenAI, extra: dict[str, bool]) -> None:
    stream = await client.chat.completions.create(model="error_chunk", messages=USER, stream=True, extra_body=extra)
    received: list[str] = []

    async def consume() -> None:
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")

    with pytest.raises(openai.APIError, match="Sorry about that"):
        await consume()
    assert "".join(received) == "Partial answer"


async def test_keep_alives_do_not_disturb_the_sdk(client: AsyncOpenAI) -> None:
    """A 600 ms wait for the first token with a keep-alive every 50 ms: comments the SDK must skip."""
    stream = await client.chat.completions.create(model="gen?n=3&first_ms=600", messages=USER, stream=True)
    text = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(text) == " t0 t1 t2"


async def test_non_stream_responses_parse_into_sdk_types(client: AsyncOpenAI) -> None:
    text = await client.chat.completions.create(model="text", messages=USER)
    assert text.object == "chat.completion"
    assert text.choices[0].message.content == TEXT
    assert text.choices[0].finish_reason == "stop"
    assert text.usage is not None
    assert text.usage.total_tokens == 23

    tools = await client.chat.completions.create(model="tool_calls", messages=USER)
    calls = tools.choices[0].message.tool_calls or []
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [  # type: ignore[union-attr]
        ("call_abc123", "get_weather", {"location": "Paris"}),
        ("call_def456", "get_time", {"tz": "CET"}),
    ]
    assert tools.choices[0].finish_reason == "tool_calls"

    reasoning = await client.chat.completions.create(model="reasoning", messages=USER)
    assert reasoning.choices[0].message.content == "The answer is 4."
    assert reasoning.choices[0].message.model_extra == {"reasoning_content": "Let me think."}


async def test_non_stream_mid_answer_failure_is_an_error_status(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as info:
        await client.chat.completions.create(model="error_chunk", messages=USER)
    assert info.value.status_code == 502


async def test_models_list(client: AsyncOpenAI) -> None:
    models = await client.models.list()
    assert [m.id for m in models.data] == ["echo", *MODELS]


async def test_errors_before_the_stream_are_sdk_exceptions(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        await client.chat.completions.create(model="gpt-nonexistent", messages=USER, stream=True)
    with pytest.raises(openai.BadRequestError, match="n=1"):
        await client.chat.completions.create(model="echo", messages=USER, n=2)
    with pytest.raises(openai.UnprocessableEntityError):
        await client.chat.completions.create(model="echo", messages=[])
    with pytest.raises(openai.RateLimitError) as info:
        await client.chat.completions.create(model="status?code=429&retry_after=3", messages=USER, stream=True)
    assert info.value.response.headers["retry-after"] == "3"


async def test_unknown_fields_reach_the_upstream_and_come_back_unchanged(base: str, upstream: FakeUpstream) -> None:
    body = {"model": "text", "messages": USER, "stream": True, "seed": 7, "user": "u-1", "logprobs": False}
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{base}/v1/chat/completions", json=body)
    sent = upstream.records_for("text")[-1].body
    assert (sent["seed"], sent["user"], sent["logprobs"]) == (7, "u-1", False)
    assert sent["stream_options"] == {"include_usage": True}
    # Fields tokenrelay does not model (service_tier, system_fingerprint, refusal) come back byte for byte.
    recorded = upstream.transcripts["text"].split(b"\n\n")
    relayed = [line for line in response.content.split(b"\n\n") if line]
    assert relayed[0] == recorded[0]
    assert b'"service_tier":"default"' in response.content
    assert relayed[-1] == b"data: [DONE]"
    assert not any(b'"choices":[]' in line for line in relayed), "usage chunk sent although not asked for"


@pytest.mark.parametrize("model", ["text", "multiline_data", "tool_calls", "echo"])
async def test_a_resumable_stream_reaches_the_sdk_as_an_unresumable_one_does(client: AsyncOpenAI, model: str) -> None:
    """`"resumable": true` (sent as the SDK's `extra_body`) adds an id to each event, which the SDK skips: its
    chunks are the same, multi-line upstream events and tool calls included."""
    plain = [
        c.model_dump() async for c in await client.chat.completions.create(model=model, messages=USER, stream=True)
    ]
    resumable = await client.chat.completions.create(
        model=model, messages=USER, stream=True, extra_body={"resumable": True}
    )
    chunks = [c.model_dump() async for c in resumable]
    assert [c["choices"] for c in chunks] == [c["choices"] for c in plain]
    assert len(chunks) > 1


async def test_keep_alives_between_a_resumable_streams_events_do_not_disturb_the_sdk(client: AsyncOpenAI) -> None:
    """Keep-alives every 50 ms in 200 ms silences after events with ids: a blank line alone would reach the SDK
    as an empty event (it keeps the last id) and fail its JSON parse."""
    stream = await client.chat.completions.create(
        model="gen?n=3&gap_ms=200", messages=USER, stream=True, extra_body={"resumable": True}
    )
    text = [chunk.choices[0].delta.content or "" async for chunk in stream if chunk.choices]
    assert "".join(text) == " t0 t1 t2"
