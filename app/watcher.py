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

import msgspec
from litestar.types import Receive, Scope, Send

from app.frame_log import FrameLog, LogTruncated
from app.frames import ErrorFrame
from app.keepalive import KeepAlive
from app.resumable import ResumableStream
from app.sse import PING, encode_json_event_without_id

logger = logging.getLogger("tokenrelay.watcher")

YIELD_AFTER_SECONDS = 0.005


class StreamWatcher:
    __slots__ = ("_after", "_head", "_ping_interval", "_position", "_prefix", "_stream")

    def __init__(
        self,
        stream: ResumableStream,
        *,
        position: int,
        prefix: bytes = b"",
        head: list[tuple[bytes, bytes]] | None,
        ping_interval: float,
        after: int = -1,
    ) -> None:
        self._stream = stream
        self._position = position
        self._prefix = prefix  # frames after the resume point, cut from the entry that holds it
        self._head = head  # None: the request that created the stream, answered with the producer's own head
        self._ping_interval = ping_interval
        # The client's resume point when it is past the log's end: frames up to it are not sent again.
        self._after = after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - an ASGI app always runs inside a task
        left = asyncio.Event()
        disconnect = loop.create_task(cancel_on_disconnect(receive, task, left))
        keepalive = KeepAlive(loop, send, self._ping_interval, PING)
        self._stream.attach()
        try:
            await self._follow(send, keepalive)
        except asyncio.CancelledError:
            if not left.is_set():
                raise
            task.uncancel()
        finally:
            keepalive.stop()
            disconnect.cancel()
            self._stream.detach()

    async def _follow(self, send: Send, keepalive: KeepAlive) -> None:
        log = self._stream.log
        head = self._head
        if head is None:
            status = await self._stream.opened()
            if status != 200:
                await send({"type": "http.response.start", "status": status, "headers": log.head})
                await send({"type": "http.response.body", "body": log.refusal, "more_body": False})
                return
            head = log.head
        await send({"type": "http.response.start", "status": 200, "headers": head})
        keepalive.start()
        position, body = self._position, self._prefix
        clock = asyncio.get_running_loop().time
        yielded = clock()
        while True:
            try:
                if log.last_seq <= self._after:
                    data, position = b"", log.end
                elif self._after >= 0:
                    data, position = log.read_after(position, self._after)
                    self._after = -1
                else:
                    data, position = log.read(position)
            except LogTruncated:
                await send({"type": "http.response.body", "body": body + _truncated(log), "more_body": False})
                return
            body += data
            done = log.ended and position == log.end
            if body or done:
                keepalive.wrote()
                await send({"type": "http.response.body", "body": body, "more_body": not done})
                body = b""
            if done:
                return
            if (now := clock()) - yielded > YIELD_AFTER_SECONDS:
                yielded = now
                await asyncio.sleep(0)  # a client that never blocks the send must not starve the loop
            await log.wait(position)


def _truncated(log: FrameLog) -> bytes:
    frame = ErrorFrame(
        code="stream_truncated",
        message="this connection fell behind the stream's log; resume with Last-Event-ID for what is left",
        retryable=True,
        request_id=log.request_id,
    )
    return encode_json_event_without_id(frame.event, msgspec.json.encode(frame))


async def cancel_on_disconnect(receive: Receive, task: asyncio.Task[None], left: asyncio.Event) -> None:
    """Cancel `task` (a watcher) when its client leaves: that watcher ends, the stream it watched goes on."""
    while (await receive())["type"] != "http.disconnect":
        pass
    left.set()
    task.cancel()
