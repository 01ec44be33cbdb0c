"""Anthropic translation: the request body, and the event stream decoded from chunks cut anywhere."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from app.redaction import Redactor
from providers.anthropic import _MessageStream, request_body
from providers.base import ChatRequest, Delta, Message, ToolCall
from providers.sse_decoder import SSEDecoder
from providers.upstream_errors import UpstreamErrors

TRANSCRIPT = (Path(__file__).resolve().parents[1] / "fixtures" / "anthropic" / "tool_use.sse").read_bytes()


def decode(chunks: list[bytes]) -> list[Delta]:
    decoder, message, out = SSEDecoder(), _MessageStream(UpstreamErrors(Redactor(()))), []
    for chunk in chunks:
        for event in decoder.feed(chunk):
            out.extend(message.feed(event.event, event.data))
    assert message.stopped
    return out


WHOLE = decode([TRANSCRIPT])


def test_whole_transcript() -> None:
    assert "".join(d.text for d in WHOLE) == "Let me check."
    assert [(c.index, c.id, c.name) for d in WHOLE for c in d.tool_calls if c.name] == [
        (0, "toolu_01T1x1fJ34qAmk2tNTrN7Up6", "get_weather"),
        (1, "toolu_02A", "get_time"),
    ]
    assert WHOLE[-1].finish_reason == "tool_calls"


@settings(max_examples=150, deadline=None)
@given(cuts=st.lists(st.integers(0, len(TRANSCRIPT)), max_size=20), crlf=st.booleans())
def test_any_chunking_and_line_ending_gives_the_same_deltas(cuts: list[int], crlf: bool) -> None:
    body = TRANSCRIPT.replace(b"\n", b"\r\n") if crlf else TRANSCRIPT
    points = [0, *sorted({min(c, len(body)) for c in cuts}), len(body)]
    assert decode([body[a:b] for a, b in itertools.pairwise(points)]) == WHOLE


def test_utf8_split_inside_a_character() -> None:
    body = (Path(__file__).resolve().parents[1] / "fixtures" / "anthropic" / "text.sse").read_bytes()
    cut = body.index("😀".encode()) + 2
    assert "".join(d.text for d in decode([body[:cut], body[cut:]])) == "Hello! 😀 中文\nbye"


def test_request_body_translates_system_tools_and_tool_results() -> None:
    messages = (
        Message("system", "Be brief."),
        Message("user", "Weather in Paris?"),
        Message("assistant", None, tool_calls=(ToolCall("toolu_1", "get_weather", '{"location": "Paris"}'),)),
        Message("tool", "18C", tool_call_id="toolu_1"),
        Message("user", ({"type": "text", "text": "And "}, {"type": "text", "text": "Rome?"})),
    )
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "description": "d", "parameters": {"type": "object"}},
    }
    request = ChatRequest(
        model="claude-x",
        messages=messages,
        request_id="r",
        temperature=1.5,
        stop=("END",),
        tools=(tool,),
        tool_choice="required",
    )
    body = request_body(request, default_max_tokens=1024)
    assert body["system"] == "Be brief."
    assert body["max_tokens"] == 1024
    assert body["temperature"] == 1.0
    assert body["stop_sequences"] == ["END"]
    assert body["tools"] == [{"name": "get_weather", "input_schema": {"type": "object"}, "description": "d"}]
    assert body["tool_choice"] == {"type": "any"}
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather in Paris?"}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                                           "input": {"location": "Paris"}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18C"},
            {"type": "text", "text": "And "},
            {"type": "text", "text": "Rome?"},
        ]},
    ]  # fmt: skip
