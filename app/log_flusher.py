"""`LogFlusher`: this replica's resumable streams' logs written to the shared store, in batches.

One task per replica: every `stream.resume.flush_interval_ms` it sends one pipeline with what every local log has
that the store has not; a stream's terminal frame wakes it at once, so that a resume elsewhere never waits for
the end of a stream that has ended. Nothing here runs per token, and no watcher on this replica ever waits for
it: they read the local log. A failed flush is logged and retried with the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from app.backends.base import BackendUnavailable
from app.backends.redis_log import RedisLogStore
from app.frame_log import FrameLog
from app.resumable import StreamLogs

logger = logging.getLogger("tokenrelay.resume")


class LogFlusher:
    def __init__(self, logs: StreamLogs, store: RedisLogStore, interval: float, *, renew_every: float) -> None:
        self._logs = logs
        self._store = store
        self._interval = interval
        # A running stream's keys expire after the retention time unless renewed, and a flush renews only the
        # logs it writes to: every `renew_every`, one flush also visits the logs that had nothing to write (a
        # long wait for a first token, a stalled upstream), so they are not lost to a resume elsewhere.
        self._renew_every = renew_every
        self._renew_at = 0.0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self._refused: list[FrameLog] = []  # announced, then refused: their keys go
        self.pipelines = 0  # written to the store (one per flush that had anything to write)
        self.failures = 0
        logs.on_add.append(self._wake_up)
        logs.on_end.append(self._ended)

    def _wake_up(self, log: FrameLog) -> None:
        log.stored = asyncio.get_running_loop().create_future()
        self._wake.set()

    def _ended(self, log: FrameLog) -> None:
        if log.status != 200 and log.announced:
            self._refused.append(log)
        self._wake.set()

    async def open(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        """Write what is left (the terminal frames of a drain above all), then stop."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        with contextlib.suppress(BackendUnavailable):
            await self.flush()
        await self._store.aclose()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
            except BackendUnavailable as exc:
                if not self._failing:
                    logger.warning("stream logs: could not write to Redis (retrying each flush): %s", exc)
                self._failing = True
            except Exception:
                logger.exception("stream logs: flush failed")
            else:
                if self._failing:
                    logger.info("stream logs: writing to Redis again")
                self._failing = False

    async def flush(self) -> None:
        now = time.monotonic()
        renew = now >= self._renew_at
        pending = self._logs.unflushed(running=renew)
        refused, self._refused = self._refused, []
        if pending or refused:
            try:
                wrote = await self._store.flush(pending, refused)
            except BaseException:
                self.failures += 1
                self._refused += refused
                for log in pending:
                    # A producer waits for its ending to be stored before its record goes; not for a store
                    # that failed (its record would not go either).
                    if log.ended and log.stored is not None and not log.stored.done():
                        log.stored.set_result(None)
                raise
            self.pipelines += wrote
        if renew:
            self._renew_at = now + self._renew_every  # only once the renewal went in: else the next flush tries
