"""The upstream SSE decoder on bodies cut anywhere."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.errors import UpstreamError
from providers.sse_decoder import ServerSentEvent, SSEDecoder

BODY = (
    ": comment\r\n"
    'event: message_start\r\ndata: {"a":1}\r\n\r\n'
    "data: line1\ndata: line2\n\n"
    "id: 7\rdata: caf\u00e9 \U0001f600 \u4e2d\r\r"
    "retry: 10\n\n"
    "data: [DONE]\n\n"
).encode()

EXPECTED = [
    ServerSentEvent("message_start", b'{"a":1}'),
    ServerSentEvent("message", b"line1\nline2"),
    ServerSentEvent("message", "caf\u00e9 \U0001f600 \u4e2d".encode(), "7"),
    ServerSentEvent("message", b"[DONE]", "7"),
]


def decode(chunks: list[bytes]) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    return [event for chunk in chunks for event in decoder.feed(chunk)]


def test_whole_body() -> None:
    assert decode([BODY]) == EXPECTED


def test_byte_by_byte_splits_crlf_and_utf8() -> None:
    assert decode([BODY[i : i + 1] for i in range(len(BODY))]) == EXPECTED


def test_crlf_split_across_chunks_is_one_line_break() -> None:
    assert decode([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == [ServerSentEvent("message", b"a\nb")]


def test_utf8_character_split_across_chunks() -> None:
    emoji = "\U0001f600".encode()
    assert decode([b"data: " + emoji[:1], emoji[1:3], emoji[3:] + b"\n\n"]) == [
        ServerSentEvent("message", "\U0001f600".encode())
    ]


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(0, len(BODY)), max_size=12))
def test_any_cut_points(cuts: list[int]) -> None:
    points = [0, *sorted(set(cuts)), len(BODY)]
    assert decode([BODY[a:b] for a, b in itertools.pairwise(points)]) == EXPECTED


def test_a_line_that_never_ends_is_refused_at_the_bound() -> None:
    """The events completed before the overlong line still come out; the next chunk fails the stream."""
    decoder = SSEDecoder(max_event_bytes=1000)
    assert decoder.feed(b"data: " + b"x" * 900) == []
    (event,) = decoder.feed(b"\n\ndata: " + b"y" * 1100)  # one event completed, then a line past the bound
    assert event.data == "x" * 900
    with pytest.raises(UpstreamError, match="line over 1000 bytes"):
        decoder.feed(b"x")


def test_empty_data_lines_count_against_the_bound() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    with pytest.raises(UpstreamError, match="event over 1000"):
        decoder.feed(b"data:\n" * 2000)


def test_an_event_that_never_ends_is_refused_at_the_bound() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    for _ in range(9):
        assert decoder.feed(b"data: " + b"x" * 100 + b"\n") == []
    with pytest.raises(UpstreamError, match="event over 1000 bytes"):
        decoder.feed(b"data: " + b"x" * 200 + b"\n")


def test_the_bound_is_per_event() -> None:
    decoder = SSEDecoder(max_event_bytes=1000)
    for _ in range(20):
        (event,) = decoder.feed(b"data: " + b"x" * 600 + b"\n\n")
        assert len(event.data) == 600


def test_bare_data_lines_count_against_the_bound() -> None:
    with pytest.raises(UpstreamError, match="event over 100 bytes"):
        SSEDecoder(max_event_bytes=100).feed(b"data\n" * 1000)


def reference(body: bytes) -> list[ServerSentEvent]:
    """The WHATWG algorithm read literally, over a whole body: what the decoder must match, however cut."""
    events: list[ServerSentEvent] = []
    data: list[bytes] = []
    event, last_id = "", None
    for line in body.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n")[:-1]:
        if not line:
            if data:
                events.append(ServerSentEvent(event or "message", b"\n".join(data), last_id))
            data, event = [], ""
            continue
        if line.startswith(b":"):
            continue
        name, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if name == b"data":
            data.append(value)
        elif name == b"event":
            event = value.decode()
        elif name == b"id" and b"\x00" not in value:
            last_id = value.decode()
    return events


_LINES = st.sampled_from(
    [b'data: {"a":1}', b"data:x", b"data", b"data: ", b"event: e", b"id: 9", b"id", b": c", b"retry: 5", b""]
)


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(st.tuples(_LINES, st.sampled_from([b"\n", b"\n", b"\n", b"\r\n", b"\r"])), max_size=30),
    cuts=st.lists(st.integers(0, 400), max_size=10),
)
def test_matches_the_spec_however_cut(lines: list[tuple[bytes, bytes]], cuts: list[int]) -> None:
    """Bodies of the common shape (LF, one `data: ` line an event) take the decoder's block path, others the
    line path, and a body may switch between them mid-stream: each must give what the spec gives."""
    body = b"".join(line + ending for line, ending in lines) + b"data: end\n\n"
    points = [0, *sorted({c for c in cuts if c < len(body)}), len(body)]
    assert decode([body[a:b] for a, b in itertools.pairwise(points)]) == reference(body)


def test_openai_shaped_body_in_one_read_and_cut_anywhere() -> None:
    body = b"".join(b'data: {"i":%d}\n\n' % i for i in range(40)) + b"data: [DONE]\n\n"
    expected = [ServerSentEvent("message", b'{"i":%d}' % i) for i in range(40)]
    expected.append(ServerSentEvent("message", b"[DONE]"))
    assert decode([body]) == expected
    for size in (1, 2, 7, 13, 64):
        assert decode([body[i : i + size] for i in range(0, len(body), size)]) == expected
