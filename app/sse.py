"""Server-Sent Events encoding: the only place where SSE bytes are made.

Pure functions over the WHATWG event-stream format (HTML Living Standard, section 9.2). Lines end in LF; data is
split on CRLF, lone CR and LF so that no text can end a line early and inject a field; ids and event names may
hold none of CR, LF or NUL, and an empty id is refused because `id:` with no value resets the client's last
event id. No BOM is ever written.
"""

from __future__ import annotations

import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")


def encode_event(event: str | None, data: str, *, id: str | None = None, retry_ms: int | None = None) -> bytes:
    """Encode one dispatchable event: `[retry:] [id:] [event:] data: ...` and the blank line that ends it."""
    parts: list[str] = []
    if retry_ms is not None:
        if retry_ms < 0:
            raise ValueError("retry must be a non-negative number of milliseconds")
        parts.append(f"retry: {retry_ms}\n")
    if id is not None:
        _check_field("id", id)
        parts.append(f"id: {id}\n")
    if event is not None:
        _check_field("event", event)
        parts.append(f"event: {event}\n")
    if "\r" in data or "\n" in data:
        parts.extend(f"data: {line}\n" for line in _LINE_BREAK.split(data))
    else:
        parts.append(f"data: {data}\n")
    parts.append("\n")
    return "".join(parts).encode()


def encode_comment(text: str) -> bytes:
    """Encode a comment block (`: text`), which every client ignores; used as a keep-alive."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode() + b"\n"


def _check_field(name: str, value: str) -> None:
    if not value:
        raise ValueError(f"an SSE {name} must not be empty")
    if _FORBIDDEN_IN_FIELD.search(value):
        raise ValueError(f"an SSE {name} must not contain CR, LF or NUL: {value!r}")


def encode_json_event(event: str, data: bytes, *, id: str, retry_ms: int | None = None) -> bytes:
    """The hot-path form of `encode_event` for compact JSON data, which never holds a raw CR or LF."""
    head = (
        f"retry: {retry_ms}\nid: {id}\nevent: {event}\ndata: "
        if retry_ms is not None
        else (f"id: {id}\nevent: {event}\ndata: ")
    )
    return head.encode() + data + b"\n\n"


PING = encode_comment("ping")
