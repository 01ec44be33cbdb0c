"""Server-Sent Events encoding: the only place where SSE bytes are made.

Pure functions over the WHATWG event-stream format (HTML Living Standard, section 9.2), called by every transport
(`/chat/stream` frames and the OpenAI chunks alike). Lines end in LF; text data is split on CRLF, lone CR and LF
so that no text can end a line early and inject a field; JSON data is compact and escaped, so it holds no line
break at all; ids and event names are tokenrelay's own (`<stream>.<seq>`, a fixed set of names), never input.
No BOM is ever written.
"""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_LINE_BREAK_BYTES = re.compile(rb"\r\n|\r|\n")


def encode_data(data: bytes) -> bytes:
    """A data-only event of any text (the `/v1` pass-through of an upstream's event, as its bytes): one `data:`
    line per line of `data`, so a line break inside it can never end the event early or smuggle in a field."""
    # `find`, not `in`: `in` on bytes first tries its operand as an integer and formats the TypeError (1k
    # instructions each, on every write).
    if data.find(b"\n") >= 0 or data.find(b"\r") >= 0:
        return b"".join(b"data: " + line + b"\n" for line in _LINE_BREAK_BYTES.split(data)) + b"\n"
    return b"data: " + data + b"\n\n"


def encode_data_events(datas: tuple[bytes, ...]) -> bytes:
    """`encode_data` of each of `datas`, in one go: pieces with no line break in them (every chunk of a read, as a
    rule) are joined once, with one scan of the result instead of two per piece."""
    joined = b"\n\ndata: ".join(datas)
    if joined.find(b"\r") >= 0 or joined.count(b"\n") != 2 * (len(datas) - 1):
        return b"".join(map(encode_data, datas))
    return b"data: " + joined + b"\n\n"


def encode_json_data(data: bytes, *, id: str | None = None) -> bytes:
    """A data-only event of compact JSON (msgspec's output escapes every CR, LF and NUL), under an id of
    tokenrelay's if given."""
    if id is not None:
        return b"id: " + id.encode() + b"\ndata: " + data + b"\n\n"
    return b"data: " + data + b"\n\n"


def number_events(body: bytes, stream_id: str, seq: int) -> tuple[bytes, int]:
    """Each event of `body` (whole events, each ended by its one blank line) under the id `<stream_id>.<seq>`,
    counting on from `seq`; and the seq after the last. What makes an OpenAI stream resumable."""
    events = body.split(b"\n\n")[:-1]
    prefix = stream_id.encode() + b"."
    out = [b"id: " + prefix + str(seq + i).encode() + b"\n" + event + b"\n\n" for i, event in enumerate(events)]
    return b"".join(out), seq + len(events)


def encode_comment(text: str) -> bytes:
    """Encode a comment block (`: text`), which every client ignores; used as a keep-alive."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode() + b"\n"


def encode_json_event(event: str, data: bytes, *, id: str, retry_ms: int | None = None) -> bytes:
    """One `/chat/stream` frame: compact JSON data (no raw CR, LF or NUL) under an id and event name that tokenrelay
    made, which never hold one either."""
    head = (
        f"retry: {retry_ms}\nid: {id}\nevent: {event}\ndata: "
        if retry_ms is not None
        else (f"id: {id}\nevent: {event}\ndata: ")
    )
    return head.encode() + data + b"\n\n"


def encode_json_event_without_id(event: str, data: bytes) -> bytes:
    """A frame that is not one of a stream's own (a watcher's own ending): with no id, no resume can name it, and
    EventSource keeps the last id it had."""
    return f"event: {event}\ndata: ".encode() + data + b"\n\n"


def encode_retry(ms: int) -> bytes:
    """A block with only a reconnection delay: it dispatches no event, and EventSource reconnects after `ms`."""
    return b"retry: %d\n\n" % ms


PING = encode_comment("ping")
# A comment line alone, with no blank line after it: what keeps a stream whose events carry ids alive for a parser
# that dispatches a blank line as an empty event once it has seen an id (openai-python then fails on its JSON).
PING_LINE = b": ping\n"
