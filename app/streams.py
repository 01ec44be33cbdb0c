"""`StreamRun`: one upstream stream relayed to one client, as an ASGI application.

Phases. Nothing is committed to the client until the upstream has produced its first delta (or a keep-alive is
due first): until then a failure can still be retried, fall back to the route's next target, or become a real
HTTP status with a JSON body. At the commit the 200, the encoder's headers and its start go out; deltas are then
relayed as they come, and exactly one terminal frame ends the body. A failure after the commit is never retried.

A task watches `receive()` for the client leaving during every phase; it cancels the run, which closes the upstream
wherever the run was waiting: on the upstream, in a backoff, or on a client that stopped reading. The shutdown
drain stops a run the same way, and the run then ends with its own terminal frame (`cancel` with reason
`server_shutdown`, or a 503 before the commit). Cleanup runs once on every ending.

The per-stream machinery is plain asyncio (one watcher task, one timer handle for keep-alives) rather than an anyio
task group: measured with bench/, the task group's scopes and cancel messages cost about a third of the proxy's
CPU per request.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import random
import time
from collections.abc import AsyncGenerator, Awaitable
from contextlib import aclosing
from typing import cast

from litestar.types import Message, Receive, Scope, Send

from app.disconnect import DisconnectWatch
from app.errors import InternalError, ProxyError, StreamCancelled, UpstreamError, error_body
from app.frame_log import FrameLog
from app.frames import CancelFrame, DoneFrame, ErrorFrame, StartFrame
from app.keepalive import KeepAlive, Pings
from app.limits import Admission
from app.loop_turns import LoopTurns
from app.registry import (
    Api,
    StopReason,
    StreamRecord,
    StreamRegistry,
    Watcher,
    epoch,
    estimated_tokens,
    owner_digest,
    public_principal,
)
from app.response_head import PROVISIONAL, PROVISIONAL_START
from app.shutdown import FINAL_WRITE_SECONDS, ShutdownDrain, shutdown_error
from app.stream_encoder import StreamEncoder
from app.stream_tally import StreamTally
from app.upstream_open import UpstreamOpening, first_of
from providers.base import ChatRequest, Delta, TokenUsage
from providers.registry import Route, Target
from providers.retry import RetryPolicy

logger = logging.getLogger("tokenrelay.stream")

# Before a shutdown `cancel`, EventSource is told to come back soon, at a random moment in this window, so that
# the clients of a stopping replica do not all reconnect to the others in the same instant.
SHUTDOWN_RETRY_MS = (500, 2500)


def new_stream_id() -> str:
    # secrets.token_urlsafe(12), without its three Python-level calls on the way to the first token.
    return base64.urlsafe_b64encode(os.urandom(12)).decode()


class StreamRun:
    # Slots: a run lives as long as its stream, and its size is part of each open stream's cost.
    __slots__ = (
        "_admission",
        "_api",
        "_client_left",
        "_committed",
        "_committing",
        "_direct",
        "_drain",
        "_encoder",
        "_ended",
        "_failure",
        "_holds_heads",
        "_keepalive",
        "_loop",
        "_pings",
        "_policy",
        "_provisional",
        "_registry",
        "_request",
        "_response_started",
        "_route",
        "_send",
        "_shutdown",
        "_stop_reason",
        "_tally",
        "_target",
        "_task",
        "_transport",
        "_turns",
        "created",
        "log",
        "stream_id",
    )

    def __init__(
        self,
        *,
        stream_id: str,
        created: int,
        admission: Admission | None,
        route: Route,
        request: ChatRequest,
        encoder: StreamEncoder,
        policy: RetryPolicy,
        pings: Pings,
        prompt_estimate: int,
        drain: ShutdownDrain,
        registry: StreamRegistry,
        api: Api,
        transport: str,
    ) -> None:
        self.stream_id = stream_id
        self._registry = registry
        self._api = api
        self._transport = transport
        self._target: Target | None = None
        self._drain = drain
        self._admission = admission
        self._route = route
        self._request = request
        self._encoder = encoder
        self._policy = policy
        self._pings = pings
        self._tally = StreamTally(prompt_estimate)
        self._send: Send = _not_started
        self._loop: asyncio.AbstractEventLoop  # the serving loop, known once __call__ runs
        self._task: asyncio.Task[None] | None = None
        self._committed = False
        self._response_started = False
        self._ended = False
        self._client_left = False
        self._shutdown = False  # stopped from outside: a shutdown, an admin or the client's own DELETE
        self._stop_reason: StopReason = "server_shutdown"
        self._turns: LoopTurns  # known once __call__ runs
        self._keepalive: KeepAlive | None = None
        self._direct = True  # serving its own client, not a log
        self._committing: asyncio.Task[None] | None = None
        self._failure: ProxyError | None = None
        self._holds_heads = False  # the server takes a provisional start (app/response_head.py)
        self._provisional: Target | None = None  # the target whose head the server holds
        self.created = created
        self.log: FrameLog | None = None  # set when the stream is produced into a log for its watchers

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        """Serve the stream to the one client of this request: it ends when the client leaves.

        `_run` itself, not a coroutine awaiting it: a frame less for the whole life of the stream."""
        return self._run(send, (scope, receive))

    async def produce(self, send: Send) -> None:
        """Run the stream into `send` (its log's), with no client of its own: only `stop` (a grace period over,
        a DELETE, an admin, a shutdown) ends it early. Keep-alives are the watchers' business."""
        await self._run(send, None)

    async def _run(self, send: Send, client: tuple[Scope, Receive] | None) -> None:
        self._send = send
        self._direct = client is not None
        self._holds_heads = client is not None and PROVISIONAL_START in (client[0].get("extensions") or ())
        self._loop = asyncio.get_running_loop()
        self._turns = LoopTurns(self._loop)
        task = self._task = asyncio.current_task()
        assert task is not None  # noqa: S101 - an ASGI app always runs inside a task
        watcher = None if client is None else DisconnectWatch(*client, self._client_gone)
        self._drain.track(self)
        self._registry.add(self)
        try:
            if self._drain.draining:
                self._ended = True
                await self._refuse(shutdown_error())
            else:
                await self._serve()
        except asyncio.CancelledError:
            if not (self._client_left or self._shutdown):
                raise
            task.uncancel()
            if self._shutdown and not self._client_left:
                await self._end_for_shutdown()
        finally:
            self._ended = True
            self._drain.untrack(self)
            if watcher is not None:
                watcher.close()
            if self._keepalive is not None:
                self._keepalive.stop()
            if self._committing is not None:
                self._committing.cancel()
            principal = self._admission.principal if self._admission is not None else "-"
            self._tally.log_end(
                stream_id=self.stream_id,
                request_id=self._request.request_id,
                principal=principal,
                model=self._route.public_model,
            )
            if self._admission is None:
                self._registry.discard(self.stream_id)
            elif not self._admission.closed:  # a stream without a log closed it before its terminal frame
                # Shielded: a second cancellation (server shutdown) must not stop the lease's release half-way.
                # Closing also takes the stream out of the registry, and its record out of the store.
                await asyncio.shield(self._release(self._admission))

    async def _release(self, admission: Admission) -> None:
        if self.log is not None:
            await self.log.settle(FINAL_WRITE_SECONDS)
        await admission.close(self._tally.used_tokens())

    def record(self, replica: str) -> StreamRecord:
        """The registry's record of this stream, as it is now."""
        target = self._target
        principal = self._admission.principal if self._admission is not None else "address"
        tally = self._tally
        first = tally.first_delta_at
        return StreamRecord(
            id=self.stream_id,
            principal=public_principal(principal),
            model=self._route.public_model,
            provider=target.provider_name if target is not None else None,
            upstream_model=target.upstream_model if target is not None else None,
            api=self._api,
            replica=replica,
            started_at=epoch(tally.started),
            first_token_at=None if first is None else epoch(first),
            tokens_out=estimated_tokens(tally.chars),
            state="starting" if first is None else "streaming",
            watchers=self._watchers(replica),
            owner=owner_digest(principal),
        )

    def _watchers(self, replica: str) -> tuple[Watcher, ...]:
        since = epoch(self._tally.started)
        count = 1 if self.log is None else self.log.watchers
        return tuple(Watcher(replica, self._transport, since) for _ in range(count))

    def stop_for_shutdown(self) -> None:
        """End the stream now: the drain time is over (cancels the run wherever it waits, like a disconnect)."""
        self.stop("server_shutdown")

    def stop(self, reason: StopReason) -> bool:
        """End the stream with one `cancel` frame for `reason` (cancelling the run wherever it waits, which
        closes the upstream); False if it has ended or is stopping already."""
        if self._ended or self._shutdown or self._task is None:
            return False
        self._shutdown = True
        self._stop_reason = reason
        self._task.cancel()
        return True

    async def _end_for_shutdown(self) -> None:
        self._ended = True
        reason = self._stop_reason
        shutdown = reason == "server_shutdown"
        self._tally.outcome = reason if shutdown else "cancelled"
        error: ProxyError = shutdown_error() if shutdown else StreamCancelled(f"the stream was stopped ({reason})")
        try:
            async with asyncio.timeout(FINAL_WRITE_SECONDS):
                if self._committing is not None and not self._committed:
                    await asyncio.shield(self._committing)  # the 200 is on its way: end the stream it starts
                if self._committed:
                    frame = CancelFrame(reason=reason, retryable=shutdown)
                    # A stopped replica's clients come back soon, at a random moment; a stopped stream does not.
                    retry_ms = random.randint(*SHUTDOWN_RETRY_MS) if shutdown else None  # noqa: S311 - jitter
                    await self._write(self._encoder.cancel(frame, self._error_frame(error), retry_ms), more=False)
                elif not self._response_started:
                    await self._refuse(error)
        except TimeoutError:
            logger.info("stream %s: the client did not take its terminal frame in time", self.stream_id)
        except Exception as exc:  # a client gone mid-write: the stream ends either way
            logger.info("stream %s: could not write its terminal frame: %s", self.stream_id, exc)

    def _client_gone(self) -> None:
        # uvicorn also reports a disconnect once the response is complete: that one is not the client leaving.
        if not self._ended and self._task is not None:
            self._client_left = True
            self._task.cancel()

    async def _serve(self) -> None:
        terminal: DoneFrame | ErrorFrame
        upstream = UpstreamOpening(
            self._route,
            self._request,
            self._policy,
            first_delta=self._first_delta,
            committed=lambda: self._committed,
            stream_id=self.stream_id,
        )
        try:
            try:
                target, deltas, first = await upstream.open()
                self._tally.served_by = target.provider_name
                self._target = target
                self._tally.first_delta_at = time.monotonic()
            except Exception as exc:
                error = exc if isinstance(exc, ProxyError) else _internal(self.stream_id, exc)
                if not self._committed:
                    self._ended = True
                    await self._refuse(error)
                    return
                terminal = self._error_frame(error)
            else:
                pending: Delta | None = first
                if self._encoder.buffered:
                    self._encoder.start(self._start_frame(target))
                elif not self._committed:
                    # The start and the first delta leave in one write: one send less before the first token.
                    await self._commit(target, first)
                    pending = None
                async with aclosing(deltas):
                    relay = self._relay(first, pending is not None, deltas)
                    del first, pending  # the relay lets go of the first delta once it is written
                    terminal = await relay
        finally:
            await upstream.aclose()
        self._ended = True
        self._tally.outcome = terminal.event
        if self.log is None and self._admission is not None:
            # Settled before the terminal frame, not after: a client that has it may send its next request at
            # once, and that request must find this one's lease given back and its tokens settled to real usage.
            # (A log's stream settles later, once Redis holds its ending: see `_release`.)
            await asyncio.shield(self._admission.close(self._tally.used_tokens()))
        if not self._encoder.buffered:
            await self._write(self._encoder.end(terminal), more=False)
        elif self._failure is not None:
            await self._refuse(self._failure)
        else:
            await self._send({"type": "http.response.start", "status": 200, "headers": self._headers(target)})
            self._response_started = True
            await self._write(self._encoder.end(terminal), more=False)

    async def _first_delta(self, target: Target, deltas: AsyncGenerator[Delta, None]) -> Delta:
        """The first delta; if a keep-alive falls due first, commit to this target meanwhile.

        A timer, not a task per stream: in the common case the delta comes first and the timer never fires.
        """
        if self._encoder.buffered:
            return await first_of(deltas)
        if self._holds_heads:
            # The head is known now, and only the first delta decides that it is the one: the server encodes it
            # while the upstream thinks, and it leaves with that delta (a refusal or another target replaces it).
            start = {"type": "http.response.start", "status": 200, "headers": self._headers(target), PROVISIONAL: True}
            await self._send(cast("Message", start))
            self._provisional = target
        timer = self._loop.call_later(self._pings.interval, self._commit_due, target)
        try:
            return await first_of(deltas)
        finally:
            timer.cancel()
            if self._committing is not None:
                # The commit is in flight or done: this target is the one the client was promised.
                await asyncio.shield(self._committing)

    def _commit_due(self, target: Target) -> None:
        if not self._ended:
            self._committing = self._loop.create_task(self._commit(target))

    async def _commit(self, target: Target, first: Delta | None = None) -> None:
        if self._provisional is not target:
            await self._send({"type": "http.response.start", "status": 200, "headers": self._headers(target)})
        self._committed = self._response_started = True
        body = self._encoder.start(self._start_frame(target))
        if first is not None:
            body += self._encoder.delta(first)
        await self._write(body)
        if self._direct:  # armed after the write: it counts silence from there, and is not time to first token
            self._keepalive = self._pings.keepalive(self._send, self._encoder.keepalive)
            self._keepalive.start()

    def _headers(self, target: Target) -> list[tuple[bytes, bytes]]:
        return [
            *self._encoder.headers,
            *self._limit_headers(),
            (b"x-tokenrelay-stream-id", self.stream_id.encode()),  # what DELETE /chat/streams/{id} takes
            (b"x-tokenrelay-provider", target.provider_name.encode()),
            (b"x-tokenrelay-model", target.upstream_model.encode()),
        ]

    def _start_frame(self, target: Target) -> StartFrame:
        return StartFrame(
            id=self.stream_id,
            model=self._route.public_model,
            provider=target.provider_name,
            upstream_model=target.upstream_model,
            created=self.created,
            request_id=self._request.request_id,
        )

    async def _relay(
        self, first: Delta, write_first: bool, deltas: AsyncGenerator[Delta, None]
    ) -> DoneFrame | ErrorFrame:
        finish_reason: str | None = None
        usage: TokenUsage | None = None
        delta, write = first, write_first
        del first
        tally = self._tally
        try:
            while True:
                tally.chars += len(delta.text)
                if delta.tool_calls:
                    tally.chars += sum(len(c.arguments) for c in delta.tool_calls)
                if write:
                    await self._write(self._encoder.delta(delta))
                write = True
                if delta.finish_reason is not None:
                    finish_reason = delta.finish_reason
                if delta.usage is not None:
                    usage = delta.usage
                del delta  # an open stream spends most of its life in the next line: it keeps no delta there
                delta = await anext(deltas)
        except StopAsyncIteration:
            pass
        except ProxyError as error:
            return self._error_frame(error)
        except Exception as exc:  # a bug must still end the stream with a frame, never a silent close
            return self._error_frame(_internal(self.stream_id, exc))
        if finish_reason is None:
            return self._error_frame(UpstreamError("the upstream ended the stream without finishing the answer"))
        return tally.done(finish_reason, usage)

    async def _write(self, body: bytes, *, more: bool = True) -> None:
        if not body and more:
            return
        self._tally.writes += 1
        if self._keepalive is not None:
            self._keepalive.wrote()
        await self._send({"type": "http.response.body", "body": body, "more_body": more})
        await self._turns.after_step()

    async def _refuse(self, error: ProxyError) -> None:
        self._tally.outcome = error.code
        headers = [(b"content-type", b"application/json"), *self._limit_headers()]
        headers += [(k.encode(), v.encode()) for k, v in error.response_headers().items()]
        await self._send({"type": "http.response.start", "status": error.status, "headers": headers})
        self._response_started = True
        body = error_body(error, self._request.request_id)
        await self._send({"type": "http.response.body", "body": body, "more_body": False})

    def _limit_headers(self) -> list[tuple[bytes, bytes]]:
        if self._admission is None:
            return []
        return [(k.encode(), v.encode()) for k, v in self._admission.headers.items()]

    def _error_frame(self, error: ProxyError) -> ErrorFrame:
        self._failure = error
        return ErrorFrame(
            code=error.code, message=error.message, retryable=error.retryable, request_id=self._request.request_id
        )


def _internal(stream_id: str, exc: Exception) -> InternalError:
    logger.error("stream %s failed", stream_id, exc_info=exc)
    return InternalError(f"tokenrelay failed while streaming ({type(exc).__name__})")


async def _not_started(message: object) -> None:
    raise RuntimeError("StreamRun sends only while it is being served")
