"""The encoders production writes with, byte for byte, and their round trip through a WHATWG-exact parser.

`/chat/stream` frames come from `SSEEncoder`, the OpenAI stream from `OpenAIChunkEncoder` (its own chunks, or an
upstream's events passed through); both go through `app/sse.py`. Hostile text is what any of them may carry:
CR, LF, CRLF, NUL, U+2028, a BOM, text that looks like a field.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.dialects import Dialect
from app.frames import DoneFrame, ErrorFrame, StartFrame, Usage
from app.openai_encoders import OpenAIChunkEncoder
from app.sse import PING, encode_comment, encode_data, encode_data_events
from app.sse_transport import SSEEncoder
from providers.base import Delta, ToolCallDelta
from tests.support.whatwg_sse import WhatwgParser, parse

BOM = b"\xef\xbb\xbf"
HOSTILE = ["a\nb", "a\r\nb", "a\rid: 9", "\n", "\r", "x\x00y", "\u2028\u2029", "\ufeffstart", "data: x\n\nevent: done"]
START = StartFrame(id="s", model="m", provider="p", upstream_model="u", created=1, request_id="r")
DONE = DoneFrame(finish_reason="stop", usage=Usage(1, 2, 3), usage_source="provider")


def test_chat_stream_frames_byte_for_byte() -> None:
    encoder = SSEEncoder("s", retry_ms=3000)
    assert encoder.start(START) == (
        b'retry: 3000\nid: s.0\nevent: start\ndata: {"id":"s","model":"m","provider":"p","upstream_model":"u",'
        b'"created":1,"request_id":"r"}\n\n'
    )
    assert encoder.delta(Delta(text="a\nb")) == b'id: s.1\nevent: token\ndata: {"text":"a\\nb"}\n\n'
    assert encoder.delta(Delta(reasoning="r", text="t")) == (
        b'id: s.2\nevent: reasoning\ndata: {"text":"r"}\n\nid: s.3\nevent: token\ndata: {"text":"t"}\n\n'
    )
    assert encoder.end(DONE).startswith(b"id: s.4\nevent: done\ndata: ")


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_in_a_frame_stays_one_event_with_its_exact_text(text: str) -> None:
    encoder = SSEEncoder("s", retry_ms=1000)
    stream = encoder.start(START) + encoder.delta(Delta(text=text)) + encoder.end(DONE)
    result = parse(stream)
    assert [e.type for e in result.events] == ["start", "token", "done"]
    assert json.loads(result.events[1].data) == {"text": text}
    assert set(result.fields_seen) == {"retry", "id", "event", "data"}


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_in_an_openai_chunk_stays_one_chunk(text: str) -> None:
    encoder = OpenAIChunkEncoder("s", "m", 1, include_usage=False)
    calls = (ToolCallDelta(index=0, id="c", name="f", arguments=text),)
    stream = encoder.delta(Delta(text=text)) + encoder.delta(Delta(tool_calls=calls)) + encoder.end(DONE)
    result = parse(stream)
    assert [e.type for e in result.events] == ["message"] * 3
    first, second = (json.loads(e.data)["choices"][0]["delta"] for e in result.events[:2])
    assert first["content"] == text
    assert second["tool_calls"][0]["function"]["arguments"] == text
    assert result.events[2].data == "[DONE]"
    assert set(result.fields_seen) == {"data"}


def test_an_upstream_event_of_several_data_lines_passes_through_as_several_lines() -> None:
    """Legal SSE: one event's `data` over two lines. Written back as one line it would end the client's event
    early and hand it invalid JSON."""
    data = '{"id":"c","object":"chat.completion.chunk",\n"choices":[{"index":0,"delta":{"content":"hi"}}]}'
    encoder = OpenAIChunkEncoder("s", "m", 1, include_usage=False)
    stream = encoder.delta(Delta(text="hi", raw=(data.encode(),)))
    assert stream == b'data: {"id":"c","object":"chat.completion.chunk",\ndata: "choices":' + (
        b'[{"index":0,"delta":{"content":"hi"}}]}\n\n'
    )
    (event,) = parse(stream).events
    assert json.loads(event.data)["choices"][0]["delta"]["content"] == "hi"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ("plain", b"data: plain\n\n"),
        ("", b"data: \n\n"),
        (" lead", b"data:  lead\n\n"),
        ("a\nb", b"data: a\ndata: b\n\n"),
        ("a\r\nb", b"data: a\ndata: b\n\n"),
        ("a\rid: 9", b"data: a\ndata: id: 9\n\n"),
        ("\u00e9\U0001f600", "data: \u00e9\U0001f600\n\n".encode()),
    ],
)
def test_pass_through_data_bytes(data: str, expected: bytes) -> None:
    assert encode_data(data.encode()) == expected


def test_comments_and_ping_are_ignored_by_parsers() -> None:
    assert PING == b": ping\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    encoder = SSEEncoder("s", retry_ms=1000)
    result = parse(PING + encoder.start(START) + PING + encoder.delta(Delta(text="x")) + PING)
    assert [e.type for e in result.events] == ["start", "token"]
    assert result.comments == ["ping", "ping", "ping"]


def test_no_stream_starts_with_a_bom_and_a_leading_u_feff_reaches_the_client() -> None:
    """A BOM before the first field is stripped by the parser, taking with it nothing, or (written before a text
    that starts with U+FEFF) the text's own first character; so neither may happen, on any transport."""
    chat = SSEEncoder("s", retry_ms=1000)
    own = OpenAIChunkEncoder("s", "m", 1, include_usage=False)
    relayed = OpenAIChunkEncoder("s", "m", 1, include_usage=False)
    streams = {
        "chat": chat.start(START) + chat.delta(Delta(text="\ufeffhi")),
        "openai": own.delta(Delta(text="\ufeffhi")),
        "relay": relayed.delta(Delta(text="\ufeffhi", raw=("\ufeffhi".encode(),))),
    }
    for name, stream in streams.items():
        assert not stream.startswith(BOM), name
        stream.decode("utf-8")  # strict: every byte is UTF-8
    assert parse(streams["relay"]).events[0].data == "\ufeffhi"
    assert json.loads(parse(streams["chat"]).events[1].data)["text"] == "\ufeffhi"


_PIECES = st.one_of(
    st.sampled_from(["\r", "\n", "\r\n", "\x00", " ", "\u2028", "\ufeff", "\U0001f600", "\u4e2d", "data: x", "id: 9"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
)
_TEXT = st.lists(_PIECES, max_size=8).map("".join)


def _feed_cut(stream: bytes, cuts: list[int]) -> WhatwgParser:
    # The bytes cut at random points, inside lines and inside UTF-8 characters.
    parser = WhatwgParser()
    previous = 0
    for cut in sorted({min(c, len(stream)) for c in cuts}):
        parser.feed(stream[previous:cut])
        previous = cut
    parser.feed(stream[previous:])
    return parser


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(_TEXT, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_random_text_round_trips_through_the_chat_stream_encoder(texts: list[str], cuts: list[int]) -> None:
    """Whatever the text, the client gets it back exactly, one frame per token, with no injected field."""
    texts = [t for t in texts if t]  # an empty delta is no frame
    encoder = SSEEncoder("s", retry_ms=1000)
    stream = encoder.start(START) + b"".join(encoder.delta(Delta(text=t)) for t in texts) + encoder.end(DONE)
    result = _feed_cut(stream, cuts).result
    tokens = [e for e in result.events if e.type == "token"]
    assert [json.loads(e.data)["text"] for e in tokens] == texts
    assert [e.type for e in result.events] == ["start", *["token"] * len(texts), "done"]
    assert [e.last_event_id for e in result.events] == [f"s.{i}" for i in range(len(texts) + 2)]
    assert set(result.fields_seen) <= {"retry", "id", "event", "data"}


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(_TEXT, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_random_text_round_trips_through_the_pass_through(texts: list[str], cuts: list[int]) -> None:
    """An upstream event's data, whatever it holds, reaches the client as the same data (line breaks as LF)."""
    encoder = OpenAIChunkEncoder("s", "m", 1, include_usage=False)
    stream = b"".join(encoder.delta(Delta(text="x", raw=(t.encode(),))) for t in texts)
    result = _feed_cut(stream, cuts).result
    assert [e.data for e in result.events] == [t.replace("\r\n", "\n").replace("\r", "\n") for t in texts]
    assert set(result.fields_seen) <= {"data"}


@given(st.lists(st.text(alphabet=st.sampled_from(["a", "\n", "\r", "d", ":", " ", "\u00e9"]), max_size=8), min_size=1))
def test_pieces_encoded_together_equal_each_encoded_alone(pieces: list[str]) -> None:
    """The pass-through joins a read's chunks once; a line break in any of them must still split it into lines."""
    datas = tuple(p.encode() for p in pieces)
    assert encode_data_events(datas) == b"".join(encode_data(d) for d in datas)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(_TEXT, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_a_resumable_pass_through_numbers_each_event_and_keeps_its_data(texts: list[str], cuts: list[int]) -> None:
    """Each event under its own id, counting from 0, with its data intact; and one blank line per event, which is
    how a stream's log counts its frames."""
    encoder = OpenAIChunkEncoder("s", "m", 1, include_usage=False, resumable=True)
    bodies = [encoder.delta(Delta(text="x", raw=(t.encode(), b"{}"))) for t in texts] + [encoder.end(DONE)]
    stream = b"".join(bodies)
    result = _feed_cut(stream, cuts).result
    expected = [d for t in texts for d in (t.replace("\r\n", "\n").replace("\r", "\n"), "{}")] + ["[DONE]"]
    assert [e.data for e in result.events] == expected
    assert [e.last_event_id for e in result.events] == [f"s.{i}" for i in range(len(expected))]
    assert stream.count(b"\n\n") == len(expected)
    assert set(result.fields_seen) == {"id", "data"}


ERROR = ErrorFrame(code="stream_lost", message="gone\nbad", retryable=True, request_id="r")


@pytest.mark.parametrize(
    ("dialect", "id", "expected"),
    [
        (
            Dialect.CHAT,
            "s.4",
            b'id: s.4\nevent: error\ndata: {"code":"stream_lost","message":"gone\\nbad","retryable":true,'
            b'"request_id":"r"}\n\n',
        ),
        (
            Dialect.CHAT,
            None,
            b'event: error\ndata: {"code":"stream_lost","message":"gone\\nbad","retryable":true,"request_id":"r"}\n\n',
        ),
        (
            Dialect.OPENAI,
            "s.4",
            b'id: s.4\ndata: {"error":{"message":"gone\\nbad","type":"api_error","param":null,'
            b'"code":"stream_lost","request_id":"r","retryable":true}}\n\n',
        ),
        (
            Dialect.OPENAI,
            None,
            b'data: {"error":{"message":"gone\\nbad","type":"api_error","param":null,"code":"stream_lost",'
            b'"request_id":"r","retryable":true}}\n\n',
        ),
    ],
)
def test_the_error_frames_tokenrelay_adds_to_a_log_speak_its_dialect(
    dialect: Dialect, id: str | None, expected: bytes
) -> None:
    assert dialect.error(ERROR, id=id) == expected
