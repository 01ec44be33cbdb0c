"""The shutdown drain: on SIGTERM (or Ctrl+C) a server process stops admitting, lets open streams run on for
`server.drain_seconds`, ends each one still open with one terminal frame, and only then lets uvicorn exit.

uvicorn alone cannot do this. On a signal it closes its listening socket at once (a client that comes during the
drain is refused at TCP level, which a load balancer reads as a dead replica, not as "go elsewhere"), and an open
SSE response never ends by itself, so after its graceful timeout uvicorn cancels every stream with no terminal
frame and one traceback each. tokenrelay takes the signal first: while it drains, the socket stays open and new
stream requests get `503 server_shutdown` with `Retry-After`; `/readyz` answers 503 so that load balancers stop
sending traffic. When every stream has ended it hands the signal to uvicorn, which then finds nothing left to wait
for. A second Ctrl+C ends the open streams at once.

Signals reach only the main thread of a process (each `--workers` process has its own); a server run in another
thread (the tests' in-process servers) has no drain.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any, Protocol

from app.errors import ServerShutdown

logger = logging.getLogger("tokenrelay.shutdown")

# After the drain, how long the streams still open get to write their terminal frame (a client that stopped
# reading cannot hold the process past this).
FINAL_WRITE_SECONDS = 1.0
RETRY_AFTER_SECONDS = 1


class Stoppable(Protocol):
    def stop_for_shutdown(self) -> None:
        """End the stream now with its terminal frame (it leaves the drain's set when it has ended)."""
        ...


SignalHandler = Callable[[int, FrameType | None], Any] | int | None


class ShutdownDrain:
    """The set of open streams of this process, and the drain that ends them on a signal."""

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._open: set[Stoppable] = set()
        # asyncio events bind to a loop only when first awaited: making them here, before the loop, is fine.
        self._changed = asyncio.Event()
        self._hurry = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.draining = False

    @property
    def open_streams(self) -> int:
        return len(self._open)

    def track(self, stream: Stoppable) -> None:
        self._open.add(stream)

    def untrack(self, stream: Stoppable) -> None:
        self._open.discard(stream)
        if self.draining:
            self._changed.set()

    def refuse_if_draining(self) -> None:
        if self.draining:
            raise shutdown_error()

    def install_signal_handlers(self) -> None:
        """Take SIGTERM and SIGINT from uvicorn (application startup); uvicorn gets each back after the drain."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous: SignalHandler = signal.getsignal(sig)
            signal.signal(sig, self._handler(loop, previous))

    def _handler(self, loop: asyncio.AbstractEventLoop, previous: SignalHandler) -> Callable[[int, Any], None]:
        def on_signal(sig: int, frame: FrameType | None) -> None:
            if self._task is None:
                loop.call_soon_threadsafe(self._start, lambda: _hand_on(previous, sig, frame))
            elif sig == signal.SIGINT:
                # A second Ctrl+C: stop waiting. A SIGTERM after a SIGINT is uvicorn's supervisor passing the
                # first one on to its workers, not a second request.
                loop.call_soon_threadsafe(self._hurry.set)

        return on_signal

    def _start(self, then: Callable[[], None]) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.drain(then))

    async def drain(self, then: Callable[[], None] | None = None) -> None:
        """Refuse new streams, wait for the open ones up to the drain time, end the rest, then call `then`."""
        self.draining = True
        loop = asyncio.get_running_loop()
        logger.info(
            "shutdown: draining for up to %.0f s with %d open stream(s); new streams get 503",
            self._seconds, len(self._open),
        )  # fmt: skip
        await self._wait_until_empty(loop.time() + self._seconds)
        if self._open:
            logger.info("shutdown: ending %d stream(s) still open", len(self._open))
            for stream in list(self._open):
                stream.stop_for_shutdown()
            await self._wait_until_empty(loop.time() + FINAL_WRITE_SECONDS + 0.5, hurry=False)
        logger.info("shutdown: drained; stopping the server")
        if then is not None:
            then()

    async def _wait_until_empty(self, deadline: float, *, hurry: bool = True) -> None:
        loop = asyncio.get_running_loop()
        while self._open and not (hurry and self._hurry.is_set()):
            left = deadline - loop.time()
            if left <= 0:
                return
            self._changed.clear()
            waits = [asyncio.ensure_future(self._changed.wait())]
            if hurry:
                waits.append(asyncio.ensure_future(self._hurry.wait()))
            _, pending = await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            for waiter in pending:
                waiter.cancel()


def shutdown_error() -> ServerShutdown:
    return ServerShutdown(
        "this server is shutting down; retry the request (another replica will serve it)",
        retry_after=RETRY_AFTER_SECONDS,
    )


def _hand_on(previous: SignalHandler, sig: int, frame: FrameType | None) -> None:
    if callable(previous):
        previous(sig, frame)  # uvicorn's own handler: it now shuts down, with nothing left to wait for
        return
    signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
    signal.raise_signal(sig)
