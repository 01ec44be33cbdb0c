"""`StreamWatcher`: one client connection following a resumable stream's log on the producing replica.

It reads the log from its position and then follows the tail, woken by each append: everything appended
while it was sending goes out in one body, so a client slower than the upstream gets merged writes rather
than a queue. The client leaving detaches the watcher and nothing else: the stream goes on (its grace period
starts when its last watcher has left). Keep-alives are per watcher, since each connection has its own
silence. A watcher that falls so far behind that the log dropped what it had yet to send ends with an
`error` frame `stream_truncated`, without an id (it is not one of the stream's frames).
"""

from __future__ import annotations

import asyncio
import logging

from litestar.types import Receive, Scope, Send

from app.dialects import Dialect
from app.disconnect import DisconnectWatch
from app.frame_log import FrameLog, LogTruncated
from app.frames import ErrorFrame
from app.keepalive import KeepAlive, Pings
from app.loop_turns import LoopTurns
from app.resumable import ResumableStream

logger = logging.getLogger("tokenrelay.watcher")


class StreamWatcher:
    __slots__ = ("_after", "_head", "_pings", "_position", "_prefix", "_stream")

    def __init__(
        self,
        stream: ResumableStream,
        *,
        position: int,
        prefix: bytes = b"",
        head: list[tuple[bytes, bytes]] | None,
        pings: Pings,
        after: int = -1,
    ) -> None:
        self._stream = stream
        self._position = position
        self._prefix = prefix  # frames after the resume point, cut from the entry that holds it
        self._head = head  # None: the request that created the stream, answered with the producer's own head
        self._pings = pings
        # The client's resume point when it is past the log's end: frames up to it are not sent again.
        self._after = after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - an ASGI app always runs inside a task
        disconnect = DisconnectWatch(scope, receive, task.cancel)
        keepalive = self._pings.keepalive(send, self._stream.log.dialect.keepalive)
        self._stream.attach()
        try:
            await self._follow(send, keepalive)
        except asyncio.CancelledError:
            if not disconnect.left:
                raise
            task.uncancel()
        finally:
            keepalive.stop()
            disconnect.close()
            self._stream.detach()

    async def _answer_head(self, send: Send) -> bool:
        """The response's head: the producer's own for the request that created the stream (its refusal, if
        it refused: False), else the resume's."""
        log = self._stream.log
        head = self._head
        if head is None:
            status = await self._stream.opened()
            if status != 200:
                await send({"type": "http.response.start", "status": status, "headers": log.head})
                await send({"type": "http.response.body", "body": log.refusal, "more_body": False})
                return False
            head = log.head
        await send({"type": "http.response.start", "status": 200, "headers": head})
        return True

    async def _follow(self, send: Send, keepalive: KeepAlive) -> None:
        log = self._stream.log
        if not await self._answer_head(send):
            return
        keepalive.start()
        body = self._prefix
        turns = LoopTurns(asyncio.get_running_loop())
        while True:
            try:
                if log.last_seq <= self._after:
                    data, self._position = b"", log.end
                elif self._after >= 0:
                    data, self._position = log.read_after(self._position, self._after)
                    self._after = -1
                else:
                    data, self._position = log.read(self._position)
            except LogTruncated:
                message = "this connection fell behind the stream's log; resume with Last-Event-ID for what is left"
                ending = idless_error(log.dialect, "stream_truncated", message, log.request_id)
                await send({"type": "http.response.body", "body": body + ending, "more_body": False})
                return
            body += data
            done = log.ended and self._position == log.end
            if body or done:
                keepalive.wrote()
                await send({"type": "http.response.body", "body": body, "more_body": not done})
                body = b""
            if done:
                return
            await turns.after_step()  # a client that never blocks the send must not starve the loop
            if self._after < 0 and log.watchers == 1 and self._position == log.end and not log.ended:
                if await self._tail(log, send, keepalive):
                    return
            else:
                await log.wait(self._position)

    async def _tail(self, log: FrameLog, send: Send, keepalive: KeepAlive) -> bool:
        """Caught up and alone: the producer sends what it appends straight to this client until the log ends
        (True: the response is complete), another watcher comes, or this one leaves; then this task reads on
        from its position, once the producer's send in flight (if any) is over."""
        complete = False
        in_flight: asyncio.Future[None] | None = None

        async def direct(body: bytes, more: bool) -> None:
            nonlocal complete, in_flight
            in_flight = asyncio.get_running_loop().create_future()
            try:
                keepalive.wrote()
                await send({"type": "http.response.body", "body": body, "more_body": more})
                if body:
                    self._position += 1
                if not more:
                    complete = True
                    log.release_tail()
            finally:
                in_flight.set_result(None)

        released = log.hand_tail(direct)
        try:
            await released
        finally:
            log.release_tail(released)
        if in_flight is not None and not in_flight.done():
            await in_flight  # one send at a time on a connection, and the position it leaves
        return complete


def idless_error(dialect: Dialect, code: str, message: str, request_id: str) -> bytes:
    """A retryable `error` frame that is not one of the stream's frames (no id): what a watcher says of its own
    connection (it fell behind, its store failed), so that a resume with the client's last id still works."""
    return dialect.error(ErrorFrame(code=code, message=message, retryable=True, request_id=request_id))
