"""`FrameLog`: one stream's frames, in order, as the SSE bytes every watcher sends.

The producer writes to a log exactly as it would write to a client (it is handed `send` in place of the ASGI
one): the response head, then bodies of whole frames, the last one terminal. Each body is one entry, with the
seq of its last frame; a watcher reads entries from its position and follows the tail, woken by the append,
so the watcher on the producing replica never waits for anything but the producer. The log is bounded by
bytes: beyond `max_bytes` its oldest entries are dropped, and a resume from them is refused as truncated.

A frame holds exactly one blank line, its end (a `/chat/stream` frame's JSON data is compact and its other lines
are tokenrelay's own; an OpenAI event's data is split into a line per line break), and seqs count frames from 0:
so the log counts the frames of each body itself, and an entry can be cut between frames by splitting on it (a
resume from inside an entry, since the start and the first token leave in one body, gets only the frames after
its seq).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from app.dialects import Dialect
from app.errors import InternalError, error_body
from app.frames import ErrorFrame

FRAME_END = b"\n\n"
# How long the producer may wait on its tail's client before the watcher's own task takes over the sending.
TAIL_SEND_SECONDS = 0.05


# Sends one body (and whether more follow) to a watcher's client.
Tail = Callable[[bytes, bool], Awaitable[None]]


class LogTruncated(Exception):
    """The frames asked for were dropped from the log (its byte cap)."""


class FrameLog:
    __slots__ = (
        "_bodies",
        "_bytes",
        "_expired",
        "_expiry",
        "_first_seq",
        "_in_flight",
        "_lasts",
        "_max_bytes",
        "_on_end",
        "_sending",
        "_tail",
        "_tail_released",
        "_waiters",
        "_watching",
        "announced",
        "base",
        "dialect",
        "ended",
        "flushed",
        "head",
        "owner",
        "refusal",
        "request_id",
        "status",
        "stored",
        "stream_id",
        "watchers",
    )

    def __init__(
        self,
        stream_id: str,
        *,
        owner: str,
        request_id: str,
        max_bytes: int,
        dialect: Dialect = Dialect.CHAT,
        on_end: Callable[[FrameLog], None] | None = None,
    ) -> None:
        self.stream_id = stream_id
        self.dialect = dialect  # the wire format of its frames, and of those tokenrelay adds
        self.owner = owner  # the principal's digest: only its own client may watch
        self.request_id = request_id
        self._max_bytes = max_bytes
        self._on_end = on_end
        self._bodies: list[bytes] = []
        self._lasts: list[int] = []  # the seq of each entry's last frame
        self._first_seq = 0  # of the oldest entry held
        self._bytes = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._tail: Tail | None = None
        self._tail_released: asyncio.Future[None] | None = None
        self._sending = 0  # counts the sends to the tail: which one is in flight, which one expired
        self._in_flight = False
        self._watching = False
        self._expiry: asyncio.TimerHandle | None = None
        self._expired = 0
        self.base = 0  # the position of the oldest entry held (positions count every entry ever appended)
        self.flushed = 0  # the position up to which the shared store has the entries
        self.announced = False  # the shared store knows the stream (whose it is), before any entry
        # Set by a shared store's flusher: done once the store holds the log's ending (or the flush failed).
        self.stored: asyncio.Future[None] | None = None
        self.status: int | None = None  # the producer's answer: 200 (committed) or a refusal's status
        self.head: list[tuple[bytes, bytes]] = []
        self.refusal = b""
        self.ended = False
        self.watchers = 0

    @property
    def end(self) -> int:
        """The position after the last entry."""
        return self.base + len(self._bodies)

    @property
    def last_seq(self) -> int:
        """The seq of the last frame appended (-1: none yet)."""
        return self._lasts[-1] if self._lasts else self._first_seq - 1

    async def send(self, message: Any) -> None:  # an ASGI `Send` (its message types are a union of TypedDicts)
        """The producer's ASGI `send`: a head, then bodies of whole frames."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.head = list(message.get("headers", ()))
        else:
            body: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            if self.status != 200:
                self.refusal += body
            elif body:
                self._append(body)
            if not more:
                self.ended = True
                if self._on_end is not None:
                    self._on_end(self)
            if self._tail is not None and (body or not more):
                await self._send_to_tail(self._tail, body, more)
        self._wake()

    async def _send_to_tail(self, tail: Tail, body: bytes, more: bool) -> None:
        """The producer never waits on a client for long: a send that has to wait for a slow client's socket
        (uvicorn waits before it writes, so nothing was written) for over `TAIL_SEND_SECONDS`, or fails, hands
        the tail back, and the watcher's own task sends that body again from its position.

        Not `asyncio.timeout` per body: its timer costs about 7 us a body, as much as the rest of the relay. A
        send to a client that keeps up never suspends, so only a send that did suspend needs a timer: one
        callback per producer step looks whether the producer is suspended in a send, and only then arms it."""
        self._sending += 1
        self._in_flight = True
        if not self._watching:
            self._watching = True
            asyncio.get_running_loop().call_soon(self._watch_send, asyncio.current_task())
        try:
            await tail(body, more)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._expired == self._sending and task is not None and task.uncancel() == 0:
                self.release_tail()  # the timer's own cancel, and nobody else's: the send took too long
                return
            self.release_tail()
            self._wake()
            raise
        except Exception:
            self.release_tail()
        finally:
            self._in_flight = False
            if self._expiry is not None:
                self._expiry.cancel()
                self._expiry = None

    def _watch_send(self, producer: asyncio.Task[Any] | None) -> None:
        self._watching = False
        if self._in_flight and producer is not None and self._expiry is None:
            # The producer's step ended inside a send: that send waits on the client.
            loop = asyncio.get_running_loop()
            self._expiry = loop.call_later(TAIL_SEND_SECONDS, self._expire, producer, self._sending)

    def _expire(self, producer: asyncio.Task[Any], send: int) -> None:
        self._expiry = None
        if self._in_flight and self._sending == send:
            # Suspended in that send still (the producer is not running: this is a callback); the cancel lands
            # at its await, inside `_send_to_tail`.
            self._expired = send
            producer.cancel()

    def hand_tail(self, tail: Tail) -> asyncio.Future[None]:
        """Have the producer send each body it appends straight to `tail` (a watcher that is caught up and alone)
        until `release_tail`; the future returned is then done. The common case, one client reading as fast as
        the upstream writes, then costs no task switch per body; a second watcher or the first one leaving hands
        the tail back to the watchers' own tasks."""
        self.release_tail()
        self._tail = tail
        released = self._tail_released = asyncio.get_running_loop().create_future()
        return released

    def release_tail(self, held: asyncio.Future[None] | None = None) -> None:
        """Hand the tail back (`held`: only if it is still the one that future was handed with)."""
        released = self._tail_released
        if held is not None and held is not released:
            return
        self._tail = self._tail_released = None
        if released is not None and not released.done():
            released.set_result(None)

    def _append(self, body: bytes) -> None:
        self._lasts.append(self.last_seq + body.count(FRAME_END))
        self._bodies.append(body)
        self._bytes += len(body)
        while self._bytes > self._max_bytes and len(self._bodies) > 1:
            self._bytes -= len(self._bodies[0])
            self._first_seq = self._lasts[0] + 1
            del self._bodies[0], self._lasts[0]
            self.base += 1

    def abort(self, stream_id: str) -> None:
        """End a log whose producer died without ending it: one `error` `internal` frame after the last one."""
        error = ErrorFrame(
            code="internal",
            message="tokenrelay failed while streaming (the stream's producer stopped)",
            retryable=True,
            request_id=self.request_id,
        )
        if self.status == 200:
            self._append(self.dialect.error(error, id=f"{stream_id}.{self.last_seq + 1}"))
        elif self.status is None:
            self.status = 500
            self.head = [(b"content-type", b"application/json")]
            self.refusal = error_body(InternalError(error.message), self.request_id)
        self.ended = True
        if self._on_end is not None:
            self._on_end(self)
        self.release_tail()
        self._wake()

    def read(self, position: int) -> tuple[bytes, int]:
        """Every entry from `position` on, joined, and the position after them."""
        if position < self.base:
            raise LogTruncated
        start = position - self.base
        if start >= len(self._bodies):
            return b"", position
        bodies = self._bodies[start:]
        return (bodies[0] if len(bodies) == 1 else b"".join(bodies)), self.end

    def read_after(self, position: int, seq: int) -> tuple[bytes, int]:
        """`read`, less the frames up to `seq` (a client that holds frames the log has yet to get)."""
        data, end = self.read(position)
        first = self._lasts[position - self.base - 1] + 1 if position > self.base else self._first_seq
        if not data or first > seq:
            return data, end
        frames = data.split(FRAME_END)[seq + 1 - first : -1]
        return b"".join(frame + FRAME_END for frame in frames), end

    def position_after(self, seq: int) -> tuple[bytes, int]:
        """Where a watcher that holds frames up to `seq` goes on: the frames after `seq` from the entry that holds
        both (else b"") and the position of the entry after it."""
        if seq >= self.last_seq:
            return b"", self.end
        if seq + 1 < self._first_seq:
            raise LogTruncated
        index = bisect.bisect_right(self._lasts, seq)
        first = self._lasts[index - 1] + 1 if index else self._first_seq
        if first > seq:
            return b"", self.base + index
        frames = self._bodies[index].split(FRAME_END)[seq + 1 - first : -1]
        return b"".join(frame + FRAME_END for frame in frames), self.base + index + 1

    def entries(self, position: int) -> list[tuple[int, int, bytes]]:
        """(first seq, last seq, body) of each entry from `position` on (the flusher's view)."""
        start = max(position - self.base, 0)
        out = []
        for index in range(start, len(self._bodies)):
            first = self._lasts[index - 1] + 1 if index else self._first_seq
            out.append((first, self._lasts[index], self._bodies[index]))
        return out

    async def settle(self, seconds: float) -> None:
        """Until the shared store holds the log's ending, for at most `seconds`. The producer's registry record
        must outlive that moment: a watcher elsewhere that found neither would take the stream for lost."""
        if self.stored is None or self.status != 200 or not self.ended:
            return  # not ended: its producer died, and the log's `internal` ending comes after this
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await asyncio.shield(self.stored)

    @property
    def first_seq(self) -> int:
        return self._first_seq

    async def wait(self, position: int) -> None:
        """Until there is something at `position`, the head is known, or the log has ended."""
        if position < self.end or self.ended:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():
                self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
