"""An event-stream parser that follows the WHATWG HTML standard, section 9.2.6, step by step.

Written independently of `app.sse` and `providers.sse_decoder`, so it can judge both: what it returns is what a
browser's EventSource would dispatch.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field


@dataclass(frozen=True)
class DispatchedEvent:
    type: str
    data: str
    last_event_id: str


@dataclass
class ParseResult:
    events: list[DispatchedEvent] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    retry: int | None = None
    fields_seen: list[str] = field(default_factory=list)


class WhatwgParser:
    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True
        self._text = ""
        self._data = ""
        self._event_type = ""
        self._last_event_id = ""
        self.result = ParseResult()

    def feed(self, chunk: bytes) -> list[DispatchedEvent]:
        text = self._decoder.decode(chunk)
        if self._first and text:
            text = text.removeprefix("\ufeff")
            self._first = False
        self._text += text
        before = len(self.result.events)
        self._consume_lines()
        return self.result.events[before:]

    def _consume_lines(self) -> None:
        while True:
            cr, lf = self._text.find("\r"), self._text.find("\n")
            if cr == -1 and lf == -1:
                return
            if cr != -1 and (lf == -1 or cr < lf):
                if cr == len(self._text) - 1:
                    return  # a CR at the end may be the first half of CRLF: wait for more
                end, width = cr, 2 if self._text[cr + 1] == "\n" else 1
            else:
                end, width = lf, 1
            line, self._text = self._text[:end], self._text[end + width :]
            self._line(line)

    def _line(self, line: str) -> None:
        if line == "":
            self._dispatch()
            return
        if line.startswith(":"):
            self.result.comments.append(line[1:].removeprefix(" "))
            return
        if ":" in line:
            name, value = line.split(":", 1)
            value = value.removeprefix(" ")
        else:
            name, value = line, ""
        self.result.fields_seen.append(name)
        if name == "event":
            self._event_type = value
        elif name == "data":
            self._data += value + "\n"
        elif name == "id":
            if "\x00" not in value:
                self._last_event_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.result.retry = int(value)

    def _dispatch(self) -> None:
        if self._data == "":
            self._event_type = ""
            return
        data = self._data.removesuffix("\n")
        self.result.events.append(DispatchedEvent(self._event_type or "message", data, self._last_event_id))
        self._data = ""
        self._event_type = ""


def parse(stream: bytes) -> ParseResult:
    parser = WhatwgParser()
    parser.feed(stream)
    return parser.result
