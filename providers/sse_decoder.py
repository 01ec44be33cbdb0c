"""An incremental decoder for upstream Server-Sent Event streams (WHATWG section 9.2.6 parsing).

It takes the body as it arrives, in chunks cut anywhere: inside a line, between the CR and LF of a CRLF, or
inside a multi-byte UTF-8 character. Bytes are split into lines first and decoded per whole line, so a character
split across chunks is never decoded in halves.

What it holds is bounded: an upstream that never ends a line or an event (a broken or hostile server) fails the
stream with `upstream_error` once `max_event_bytes` is pending, instead of growing memory per stream.
"""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import UpstreamError

MAX_EVENT_BYTES = 1024 * 1024  # a chunk of Chat Completions or Anthropic events is a few hundred bytes


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str
    data: str
    id: str | None = None


class SSEDecoder:
    """Feed body chunks, get the events they complete. Comments and `retry:` are consumed and ignored."""

    __slots__ = ("_data", "_event", "_id", "_max", "_overflow", "_pending", "_size", "_skip_lf")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._size = 0  # of the data lines of the event being read (characters, plus one per line)
        self._overflow: str | None = None  # the bound was passed: the next feed fails
        self._pending = b""
        self._skip_lf = False
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if self._overflow is not None:
            raise UpstreamError(self._overflow)
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        if not chunk:
            return []
        buffer = self._pending + chunk if self._pending else chunk
        lines = buffer.splitlines(keepends=True)
        last = lines[-1]
        if last.endswith((b"\n", b"\r")):
            self._pending = b""
            # A chunk that ends in CR may be the first half of a CRLF.
            self._skip_lf = last.endswith(b"\r")
        else:
            self._pending = lines.pop()
            if len(self._pending) > self._max:
                # The events this chunk completed still go out first; the stream fails at the next chunk.
                self._overflow = f"the upstream sent a line over {self._max} bytes"
                self._pending = b""
        events: list[ServerSentEvent] = []
        for raw in lines:
            event = self._line(raw.rstrip(b"\r\n").decode("utf-8", errors="replace"))
            if event is not None:
                events.append(event)
        return events

    def _line(self, line: str) -> ServerSentEvent | None:
        if not line:
            return self._dispatch()
        if line[0] == ":":
            return None
        name, colon, value = line.partition(":")
        if colon and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._size += len(value) + 1  # an empty `data:` line still costs a list entry
            if self._size > self._max:
                raise UpstreamError(f"the upstream sent an event over {self._max} characters")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\x00" not in value:
            self._id = value
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        if not self._data:
            self._event = ""
            return None
        event = ServerSentEvent(event=self._event or "message", data="\n".join(self._data), id=self._id)
        self._data = []
        self._size = 0
        self._event = ""
        return event
