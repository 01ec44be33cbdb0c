"""The SSE encoder, byte for byte, and a round trip through a WHATWG-exact parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.sse import PING, encode_comment, encode_event, encode_json_event
from tests.support.whatwg_sse import WhatwgParser, parse


@pytest.mark.parametrize(
    ("event", "data", "event_id", "retry", "expected"),
    [
        ("token", "hi", None, None, b"event: token\ndata: hi\n\n"),
        ("token", "hi", "s.1", None, b"id: s.1\nevent: token\ndata: hi\n\n"),
        ("start", "{}", "s.0", 3000, b"retry: 3000\nid: s.0\nevent: start\ndata: {}\n\n"),
        (None, "plain", None, None, b"data: plain\n\n"),
        ("token", "", None, None, b"event: token\ndata: \n\n"),
        ("token", " lead", None, None, b"event: token\ndata:  lead\n\n"),
        ("token", "a\nb", None, None, b"event: token\ndata: a\ndata: b\n\n"),
        ("token", "a\r\nb", None, None, b"event: token\ndata: a\ndata: b\n\n"),
        ("token", "a\rid: 9", None, None, b"event: token\ndata: a\ndata: id: 9\n\n"),
        ("token", "\n", None, None, b"event: token\ndata: \ndata: \n\n"),
        ("token", "\u00e9\U0001f600", None, None, "event: token\ndata: \u00e9\U0001f600\n\n".encode()),
    ],
)
def test_encode_event_bytes(
    event: str | None, data: str, event_id: str | None, retry: int | None, expected: bytes
) -> None:
    assert encode_event(event, data, id=event_id, retry_ms=retry) == expected


@pytest.mark.parametrize("bad", ["", "a\nb", "a\rb", "a\x00b"])
def test_ids_and_event_names_refuse_line_breaks_nul_and_empty(bad: str) -> None:
    with pytest.raises(ValueError, match="SSE"):
        encode_event("token", "x", id=bad)
    with pytest.raises(ValueError, match="SSE"):
        encode_event(bad, "x")


def test_json_event_matches_the_general_encoder() -> None:
    data = b'{"text":"a\\nb"}'
    assert encode_json_event("token", data, id="s.4") == encode_event("token", data.decode(), id="s.4")
    assert encode_json_event("start", b"{}", id="s.0", retry_ms=10) == encode_event(
        "start", "{}", id="s.0", retry_ms=10
    )


def test_comments_and_ping_are_ignored_by_parsers() -> None:
    assert PING == b": ping\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    result = parse(PING + encode_event("token", "x") + PING)
    assert [e.data for e in result.events] == ["x"]
    assert result.comments == ["ping", "ping"]


def test_no_bom_and_utf8_only() -> None:
    assert not encode_event("token", "\ufeffx").startswith(b"\xef\xbb\xbf")


_PIECES = st.one_of(
    st.sampled_from(["\r", "\n", "\r\n", "\x00", " ", "\U0001f600", "\u00e9", "\u4e2d", "data: x", "id: 9"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
)
_TEXT = st.lists(_PIECES, max_size=8).map("".join)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(_TEXT, min_size=1, max_size=6), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_random_text_round_trips_through_a_whatwg_parser(texts: list[str], cuts: list[int]) -> None:
    """Whatever the text, the client gets it back (line breaks normalised to LF) and no injected field."""
    stream = b"".join(encode_event("token", t, id=f"s.{i}") for i, t in enumerate(texts))
    parser = WhatwgParser()
    # Feed the bytes cut at random points, inside lines and inside UTF-8 characters.
    previous = 0
    for cut in sorted({min(c, len(stream)) for c in cuts}):
        parser.feed(stream[previous:cut])
        previous = cut
    parser.feed(stream[previous:])
    result = parser.result
    expected = [t.replace("\r\n", "\n").replace("\r", "\n") for t in texts]
    assert [e.data for e in result.events] == expected
    assert [e.type for e in result.events] == ["token"] * len(texts)
    assert [e.last_event_id for e in result.events] == [f"s.{i}" for i in range(len(texts))]
    assert set(result.fields_seen) <= {"id", "event", "data"}
    assert result.retry is None
