"""A response's head encoded in one pass: the bytes uvicorn writes, for about half its work.

uvicorn checks and writes a response's headers one at a time: two regular-expression searches, a `lower()` and
four comparisons per header. A stream's head carries about twenty (its own, the limits', the security headers,
the request id, `date`) and leaves with the first token: under callgrind that loop was 120k instructions, the
largest single piece of the work between the upstream's first token and the client's. `encode_head` checks the
same rules over all names at once and over the whole head at once. What it does not cover (a name uvicorn acts
on, `content-length`, `transfer-encoding` or `connection`; a name that is not lower-case letters, digits and
dashes; a control character in a value; a status uvicorn has no line for) goes to uvicorn's own code, which
also raises its errors.

A stream's head is known before its first token, which decides whether the head is a 200 at all (an upstream that
fails before it is answered with an error status). So the head can be given early as a *provisional* start: the
cycle encodes it then, while the stream waits for its upstream, and writes it with the first body; a later start
replaces it, and nothing reaches the client before a body. The server offers this as an ASGI extension
(`PROVISIONAL_START` in the scope's `extensions`), which an app checks before it marks a start `PROVISIONAL`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any

from uvicorn._types import ASGISendEvent
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, RequestResponseCycle

from app.connection_state import LazyEvent

Header = tuple[bytes, bytes]

# The scope extension that says this server takes provisional starts, and the key that marks one.
PROVISIONAL_START = "tokenrelay.provisional_start"
PROVISIONAL = "tokenrelay.provisional"

_NAME_BYTES = b"abcdefghijklmnopqrstuvwxyz0123456789-"
# What uvicorn refuses in a value (its HEADER_VALUE_RE) but CR and LF, which end each line and are counted apart.
_CONTROL = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])


def encode_head(status: int, headers: Sequence[Header], *, keep_alive: bool, chunked: bool) -> bytes | None:
    """The status line and headers uvicorn would write for `http.response.start`, or None where uvicorn must
    write them itself."""
    status_line = STATUS_LINE.get(status)
    names = b"".join([name for name, _ in headers])
    if (
        status_line is None
        or names.translate(None, _NAME_BYTES)
        or b"content-length" in names
        or b"transfer-encoding" in names
        or b"connection" in names
    ):
        return None
    parts = [status_line]
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    if not keep_alive:
        parts.append(b"connection: close\r\n")
    if chunked:
        parts.append(b"transfer-encoding: chunked\r\n")
    head = b"".join(parts)
    # Names hold neither CR nor LF: any beyond one pair per line is in a value.
    lines = len(parts) - len(headers) * 3
    if len(head.translate(None, _CONTROL)) != len(head) or head.count(b"\r") != lines or head.count(b"\n") != lines:
        return None
    return head + b"\r\n"


class FastHeadCycle(RequestResponseCycle):
    """uvicorn's request-response cycle, its response head written by `encode_head`.

    `send` is a plain function returning the awaitable, so a body `send` (one per token) costs no extra frame.
    """

    # A provisional start not yet replaced or written: the message, and its head if encoded for this cycle.
    _held: tuple[ASGISendEvent, bytes | None, bool] | None = None

    @classmethod
    def adopt(cls, cycle: RequestResponseCycle) -> FastHeadCycle:
        """This kind of cycle in the state of uvicorn's `cycle`, whose task has not started: made by its own
        constructor (an instance whose class is changed afterwards loses CPython's fast attribute access), and
        with a `LazyEvent` (`app/connection_state.py`)."""
        own = cls(
            scope=cycle.scope,
            transport=cycle.transport,
            flow=cycle.flow,
            logger=cycle.logger,
            access_logger=cycle.access_logger,
            access_log=cycle.access_log,
            default_headers=cycle.default_headers,
            message_event=LazyEvent(cycle.message_event.is_set()),  # type: ignore[arg-type]
            expect_100_continue=cycle.waiting_for_100_continue,
            keep_alive=cycle.keep_alive,
            on_response=cycle.on_response,
        )
        # What a pipelined request received while it waited for the one before it.
        own.body, own.more_body, own.disconnected = cycle.body, cycle.more_body, cycle.disconnected
        extensions = own.scope.get("extensions")
        if extensions is None:
            own.scope["extensions"] = extensions = {}
        extensions[PROVISIONAL_START] = {}
        return own

    def send(self, message: ASGISendEvent) -> Coroutine[Any, Any, None]:
        if message["type"] == "http.response.start":
            self._held = None  # replaced, if one was held
            if message.get(PROVISIONAL) and not self.response_started:
                self._held = (message, self._encoded(message), self.keep_alive)
                return _sent()
            head = self._encoded(message)
            if head is not None and self._can_write_own_head():
                self._start(message, head, flush=True)
                return _sent()
        elif self._held is not None:
            held, head, keep_alive = self._held
            self._held = None
            if head is not None and keep_alive == self.keep_alive and not self.disconnected:
                # Started now, as the app was told: the head leaves with this body, or with the next one written
                # if this send is cancelled while it waits for a paused transport. No flush needed.
                self._start(held, head, flush=False)
            else:
                return self._replay(held, message)
        return super().send(message)

    def _encoded(self, message: ASGISendEvent) -> bytes | None:
        own = message.get("headers", ())
        # A list or tuple: read here and again by uvicorn if it takes over, which an iterator would not survive.
        if not isinstance(own, list | tuple) or self.response_started or self.access_log:
            return None
        status = message["status"]  # type: ignore[typeddict-item]
        headers = [*self.default_headers, *own]
        return encode_head(status, headers, keep_alive=self.keep_alive, chunked=_chunked(self, status))

    def _can_write_own_head(self) -> bool:
        return not (self.response_started or self.disconnected or self.flow.write_paused)

    def _start(self, message: ASGISendEvent, head: bytes, *, flush: bool) -> None:
        self.response_started = True
        self.waiting_for_100_continue = False
        if _chunked(self, message["status"]):  # type: ignore[typeddict-item]
            self.chunked_encoding = True
            # Its body always ends with a write (the last chunk), which takes a head still held.
            self.transport = HeadWithFirstBody(self.transport, head, self, flush=flush)  # type: ignore[assignment]
        else:
            self.transport.write(head)  # no body will be written: the response is over

    async def _replay(self, start: ASGISendEvent, body: ASGISendEvent) -> None:
        """A provisional start this cycle cannot write itself now: uvicorn writes it, then the body."""
        await super().send(start)
        await super().send(body)


def _chunked(cycle: RequestResponseCycle, status: int) -> bool:
    # Without a content-length (the one-pass head has none), uvicorn chunks every body but these (RFC 9110).
    return cycle.scope["method"] != "HEAD" and status not in (204, 304)


async def _sent() -> None:
    return None


class HeadWithFirstBody:
    """The transport a chunked response's cycle writes through while its head waits: the head goes out with the
    first body written in the same loop turn, one system call and one wake-up of the client instead of two (a
    stream's start leaves with its first token), or alone from a `call_soon` (a stream committed before its first
    token; uvloop runs it after that iteration's I/O callbacks). Then the cycle has its connection's transport
    back."""

    __slots__ = ("_cycle", "_flush", "_head", "_transport")

    def __init__(self, transport: Any, head: bytes, cycle: RequestResponseCycle, *, flush: bool) -> None:
        self._transport = transport
        self._head = head
        self._cycle = cycle
        self._flush = asyncio.get_running_loop().call_soon(self._write_head) if flush else None

    def write(self, data: bytes) -> None:
        self._release()
        self._transport.write(self._head + data)

    def is_closing(self) -> bool:
        return bool(self._transport.is_closing())

    def close(self) -> None:
        self._write_head()
        self._transport.close()

    def _write_head(self) -> None:
        if self._cycle.transport is self:  # type: ignore[comparison-overlap]
            self._release()
            if not self._transport.is_closing():
                self._transport.write(self._head)

    def _release(self) -> None:
        if self._flush is not None:
            self._flush.cancel()
        self._cycle.transport = self._transport
