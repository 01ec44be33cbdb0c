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
