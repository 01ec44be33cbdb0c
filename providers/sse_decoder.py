"""An incremental decoder for upstream Server-Sent Event streams (WHATWG section 9.2.6 parsing).

It takes the body as it arrives, in chunks cut anywhere: inside a line, between the CR and LF of a CRLF, or
inside a multi-byte UTF-8 character. Bytes are split into lines first and decoded per whole line, so a character
split across chunks is never decoded in halves.

What it holds is bounded: an upstream that never ends a line or an event (a broken or hostile server) fails the
stream with `upstream_error` once `max_event_bytes` is pending, instead of growing memory per stream.
"""

from __future__ import annotations

import msgspec

from app.errors import UpstreamError

MAX_EVENT_BYTES = 1024 * 1024  # a chunk of Chat Completions or Anthropic events is a few hundred bytes


class ServerSentEvent(msgspec.Struct, frozen=True):
    """One dispatched event. `payload` is its data as the upstream sent it (bytes, lines joined by LF): JSON
    parsers and the pass-through relay take it as it is, with no decoding to `str` and back."""

    event: str
    payload: bytes
    id: str | None = None

    @property
    def data(self) -> str:
        return self.payload.decode("utf-8", errors="replace")


class SSEDecoder:
    """Feed body chunks, get the events they complete. Comments and `retry:` are consumed and ignored.

    It works on bytes, line by line with C-level splitting, and touches only the lines' first bytes: the data of
    an event is joined once, when it is dispatched."""

    __slots__ = ("_data", "_event", "_id", "_max", "_overflow", "_pending", "_size", "_skip_lf")

    def __init__(self, max_event_bytes: int = MAX_EVENT_BYTES) -> None:
        self._max = max_event_bytes
        self._size = 0  # of the data lines of the event being read (bytes, plus one per line)
        self._overflow: str | None = None  # the bound was passed: the next feed fails
        self._pending = b""
        self._skip_lf = False
        self._data: list[bytes] = []
        self._event = ""
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        if self._overflow is None and not self._skip_lf and not self._data and not self._event:
            buffer = self._pending + chunk if self._pending else chunk
            # `find`, not `in`: `in` on bytes first tries its operand as an integer and formats the TypeError (1k
            # instructions a read).
            if buffer.find(b"\r") < 0:
                return self._feed_blocks(buffer)
        events: list[ServerSentEvent] = []
        for line in self._lines(chunk):
            self._line(line, events)
        return events

    def _feed_blocks(self, buffer: bytes) -> list[ServerSentEvent]:
        """The common case, LF line ends and no event half read: split into events at blank lines, and take an
        event that is one `data: ` line as it is, without going line by line (a fifth of the relay's CPU). When
        every complete event of the buffer is such a line (a read of Chat Completions chunks), they are all cut
        out by one split, with no Python step per event but its object."""
        cut = buffer.rfind(b"\n\n")
        if 0 <= cut < self._max:
            framed = b"\n\n" + buffer[:cut]
            # Each event that is one `data: ` line brings exactly the two LFs before it; anything else, more.
            if framed.count(b"\n") == 2 * framed.count(b"\n\ndata: "):
                tail = buffer[cut + 2 :]
                if len(tail) > self._max:
                    return self._feed_blocks_one_by_one(buffer)
                self._pending = tail
                event_id = self._id
                return [ServerSentEvent("message", payload, event_id) for payload in framed.split(b"\n\ndata: ")[1:]]
        return self._feed_blocks_one_by_one(buffer)

    def _feed_blocks_one_by_one(self, buffer: bytes) -> list[ServerSentEvent]:
        events: list[ServerSentEvent] = []
        blocks = buffer.split(b"\n\n")
        self._pending = b""
        for block in blocks[:-1]:
            if block[:6] == b"data: " and block.find(b"\n") < 0:
                if len(block) - 6 >= self._max:
                    raise UpstreamError(f"the upstream sent an event over {self._max} bytes")
                events.append(ServerSentEvent("message", block[6:], self._id))
            else:
                for line in block.split(b"\n"):
                    self._line(line, events)
                self._line(b"", events)
        tail = blocks[-1]  # an event still arriving (b"" when the buffer ended with its blank line)
        if len(tail) > self._max:
            # Too long to hold unread: its lines are read now, and the line-by-line bounds decide.
            for line in self._lines(tail):
                self._line(line, events)
        else:
            self._pending = tail
        return events

    def _line(self, line: bytes, events: list[ServerSentEvent]) -> None:
        if not line:
            if self._data:
                events.append(self._dispatch())
            else:
                self._event = ""
        elif line.startswith(b"data:"):
            value = line[6:] if line[5:6] == b" " else line[5:]
            self._size += len(value) + 1  # an empty `data:` line still costs a list entry
            if self._size > self._max:
                raise UpstreamError(f"the upstream sent an event over {self._max} bytes")
            self._data.append(value)
        elif line[0] != 58:  # not a comment (":")
            self._field(line)

    def _lines(self, chunk: bytes) -> list[bytes]:
        """The whole lines `chunk` completes; a partial last line waits for the next chunk."""
        if self._overflow is not None:
            raise UpstreamError(self._overflow)
        if self._skip_lf and chunk[:1] == b"\n":
            chunk = chunk[1:]
        self._skip_lf = False
        if not chunk:
            return []
        buffer = self._pending + chunk if self._pending else chunk
        lines = buffer.splitlines()  # CRLF, CR and LF, as the spec's line endings (bytes know no others)
        last = buffer[-1]
        if last == 10 or last == 13:  # noqa: PLR1714 - ints from bytes: a tuple test is slower here
            self._pending = b""
            # A chunk that ends in CR may be the first half of a CRLF.
            self._skip_lf = last == 13
        else:
            self._pending = lines.pop()
            if len(self._pending) > self._max:
                # The events this chunk completed still go out first; the stream fails at the next chunk.
                self._overflow = f"the upstream sent a line over {self._max} bytes"
                self._pending = b""
        return lines

    def _field(self, line: bytes) -> None:
        name, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if name == b"data":  # a bare `data` line: an empty line of data
            self._size += 1
            if self._size > self._max:
                raise UpstreamError(f"the upstream sent an event over {self._max} bytes")
            self._data.append(b"")
        elif name == b"event":
            self._event = value.decode("utf-8", errors="replace")
        elif name == b"id" and b"\x00" not in value:
            self._id = value.decode("utf-8", errors="replace")

    def _dispatch(self) -> ServerSentEvent:
        data = self._data
        event = ServerSentEvent(self._event or "message", data[0] if len(data) == 1 else b"\n".join(data), self._id)
        self._data = []
        self._event = ""
        self._size = 0
        return event
