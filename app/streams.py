"""`StreamRun`: one upstream stream relayed to one client, as an ASGI application.

Phases: the upstream is opened while nothing is committed, so a failure is still a real HTTP status with a JSON
body. Once the upstream answered with success headers, the 200 and the transport's headers go out with the
`start` frame, deltas are relayed as frames, and exactly one terminal frame ends the body.

A task watches `receive()` for the client leaving during every phase (the upstream open included); it cancels the
run, which closes the upstream wherever the run was waiting: on the upstream, or on a client that stopped
reading. Cleanup runs once on every ending.

The per-stream machinery is plain asyncio (one watcher task, one timer handle for keep-alives) rather than an anyio
task group: measured with bench/, the task group's scopes and cancel messages cost about a third of the proxy's
CPU per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from typing import Protocol

from litestar.types import Receive, Scope, Send

from app.errors import InternalError, ProxyError, UpstreamError, error_body
from app.frames import (
    DoneFrame,
    ErrorFrame,
    Frame,
    ReasoningFrame,
    StartFrame,
    TokenFrame,
    ToolCallFrame,
    Usage,
)
from providers.base import ChatRequest, Delta, TokenUsage
from providers.registry import Route

logger = logging.getLogger("tokenrelay.stream")

YIELD_AFTER_SECONDS = 0.005


class FrameTransport(Protocol):
    headers: tuple[tuple[bytes, bytes], ...]
    keepalive: bytes

    def encode(self, frame: Frame, frame_id: str, seq: int) -> bytes: ...


def new_stream_id() -> str:
    return secrets.token_urlsafe(12)


class StreamRun:
    def __init__(
        self,
        *,
        route: Route,
        request: ChatRequest,
        transport: FrameTransport,
        ping_interval: float,
        prompt_estimate: int,
    ) -> None:
        self.stream_id = new_stream_id()
        self._route = route
        self._request = request
        self._transport = transport
        self._ping_interval = ping_interval
        self._prompt_estimate = prompt_estimate
        self._send: Send = _not_started
        self._loop: asyncio.AbstractEventLoop  # the serving loop, known once __call__ runs
        self._client_left = False
        self._ping_timer: asyncio.TimerHandle | None = None
        self._pings: set[asyncio.Task[None]] = set()
        self._seq = 0
        self._committed = False
        self._ended = False
        self._last_write = 0.0
        self._last_yield = 0.0
        self._completion_chars = 0
        self._outcome = "disconnected"
        self._started = time.monotonic()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = send
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None  # noqa: S101 - an ASGI app always runs inside a task
        watcher = self._loop.create_task(self._cancel_on_disconnect(receive, task))
        try:
            await self._serve()
        except asyncio.CancelledError:
            if not self._client_left:
                raise
            task.uncancel()
        finally:
            self._ended = True
            watcher.cancel()
            if self._ping_timer is not None:
                self._ping_timer.cancel()
            for ping in self._pings:
                ping.cancel()
            # Cleanup is synchronous today; an awaited step added here must be shielded, since a second
            # cancellation (server shutdown) could otherwise interrupt it half-way.
            self._finish()

    async def _cancel_on_disconnect(self, receive: Receive, task: asyncio.Task[None]) -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        # uvicorn also reports a disconnect once the response is complete: that one is not the client leaving.
        if not self._ended:
            self._client_left = True
            task.cancel()

    async def _serve(self) -> None:
        try:
            async with self._route.provider.stream(self._request) as deltas:
                await self._commit()
                self._arm_ping(self._ping_interval)
                async with aclosing(deltas):
                    terminal = await self._relay(deltas)
        except ProxyError as error:
            if not self._committed:
                await self._refuse(error)
                return
            terminal = self._error_frame(error)
        except Exception as exc:
            logger.exception("stream %s failed", self.stream_id)
            if not self._committed:
                await self._refuse(InternalError("tokenrelay failed to open the stream"))
                return
            terminal = self._error_frame(InternalError(f"tokenrelay failed mid-stream: {type(exc).__name__}"))
        self._ended = True
        self._outcome = terminal.event
        await self._write(terminal, more=False)

    async def _commit(self) -> None:
        await self._send({"type": "http.response.start", "status": 200, "headers": list(self._transport.headers)})
        self._committed = True
        start = StartFrame(
            id=self.stream_id,
            model=self._route.public_model,
            provider=self._route.provider_name,
            created=int(time.time()),
            request_id=self._request.request_id,
        )
        await self._write(start)

    async def _relay(self, deltas: AsyncIterator[Delta]) -> Frame:
        finish_reason: str | None = None
        usage: TokenUsage | None = None
        try:
            async for delta in deltas:
                if delta.reasoning:
                    await self._write(ReasoningFrame(text=delta.reasoning))
                if delta.text:
                    self._completion_chars += len(delta.text)
                    await self._write(TokenFrame(text=delta.text))
                for call in delta.tool_calls:
                    self._completion_chars += len(call.arguments)
                    frame = ToolCallFrame(index=call.index, id=call.id, name=call.name, arguments=call.arguments)
                    await self._write(frame)
                if delta.finish_reason is not None:
                    finish_reason = delta.finish_reason
                if delta.usage is not None:
                    usage = delta.usage
        except ProxyError as error:
            return self._error_frame(error)
        if finish_reason is None:
            return self._error_frame(UpstreamError("the upstream ended the stream without finishing the answer"))
        if usage is None:
            completion = math.ceil(self._completion_chars / 4)
            total = Usage(self._prompt_estimate, completion, self._prompt_estimate + completion)
            return DoneFrame(finish_reason=finish_reason, usage=total, usage_source="estimated")
        total = Usage(usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens + usage.completion_tokens)
        return DoneFrame(finish_reason=finish_reason, usage=total, usage_source="provider")

    async def _write(self, frame: Frame, *, more: bool = True) -> None:
        body = self._transport.encode(frame, f"{self.stream_id}.{self._seq}", self._seq)
        self._seq += 1
        now = self._last_write = self._loop.time()
        await self._send({"type": "http.response.body", "body": body, "more_body": more})
        if now - self._last_yield > YIELD_AFTER_SECONDS:
            # Neither a buffered upstream read nor a send to a departed client suspends, so a fast stream
            # could run on without giving the loop a turn: other streams would starve, and the disconnect
            # watcher could not stop this one until the upstream's buffers ran dry.
            self._last_yield = now
            await asyncio.sleep(0)

    def _arm_ping(self, delay: float) -> None:
        # One timer per idle interval, not one per token: when it fires, it re-arms for the time still to go.
        self._ping_timer = self._loop.call_later(delay, self._ping_due)

    def _ping_due(self) -> None:
        if self._ended:
            return
        idle = self._loop.time() - self._last_write
        if idle >= self._ping_interval:
            self._last_write = self._loop.time()
            self._pings.add(ping := self._loop.create_task(self._send_ping(self._seq)))
            ping.add_done_callback(self._pings.discard)
            idle = 0.0
        self._arm_ping(self._ping_interval - idle)

    async def _send_ping(self, seq_when_due: int) -> None:
        # A frame written since the ping fell due ended the silence: the ping would only add noise.
        if not self._ended and self._seq == seq_when_due:
            await self._send({"type": "http.response.body", "body": self._transport.keepalive, "more_body": True})

    async def _refuse(self, error: ProxyError) -> None:
        self._outcome = error.code
        headers = [(b"content-type", b"application/json")]
        headers += [(k.encode(), v.encode()) for k, v in error.response_headers().items()]
        await self._send({"type": "http.response.start", "status": error.status, "headers": headers})
        body = error_body(error, self._request.request_id)
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    def _error_frame(self, error: ProxyError) -> ErrorFrame:
        return ErrorFrame(
            code=error.code,
            message=error.message,
            retryable=error.retryable,
            request_id=self._request.request_id,
        )

    def _finish(self) -> None:
        self._ended = True
        logger.info(
            "stream end id=%s request_id=%s model=%s provider=%s outcome=%s frames=%d seconds=%.3f",
            self.stream_id,
            self._request.request_id,
            self._route.public_model,
            self._route.provider_name,
            self._outcome,
            self._seq,
            time.monotonic() - self._started,
        )


async def _not_started(message: object) -> None:
    raise RuntimeError("StreamRun sends only while it is being served")
