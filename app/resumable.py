"""Resumable streams: a producer running on its own into a log, and this replica's logs by stream id.

A `ResumableStream` is a `StreamRun` produced into a `FrameLog` by a task of its own, so that no client
connection decides its life. Watchers attach and detach. When the last one leaves, a stream that is not
detached runs on for `stream.resume.grace_seconds`, and is then stopped (the upstream closed, a `cancel` with
reason `client` ends the log) unless someone came back, on this replica or, through the shared store, on
another. A detached stream (`POST /chat/streams`) runs to its end whoever watches.

`StreamLogs` holds this replica's resumable streams while they run and their logs for
`stream.resume.retention_seconds` after, for late reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from app.frame_log import FrameLog
from app.settings import ResumeSettings
from app.shutdown import FINAL_WRITE_SECONDS
from app.streams import StreamRun

logger = logging.getLogger("tokenrelay.resume")

RemoteCheck = Callable[[str], Awaitable[bool]]


class ResumableStream:
    __slots__ = ("_checking", "_detached", "_grace", "_remote", "_task", "_timer", "log", "run")

    def __init__(
        self, run: StreamRun, log: FrameLog, *, grace: float, detached: bool, remote_watchers: RemoteCheck | None
    ) -> None:
        self.run: StreamRun | None = run  # None once it ended: only the log is kept for late resumes
        self.log = log
        run.log = log
        self._grace = grace
        self._detached = detached
        self._remote = remote_watchers
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._checking: asyncio.Task[None] | None = None

    @property
    def stream_id(self) -> str:
        return self.log.stream_id

    def start(self) -> None:
        if self.run is None:
            raise RuntimeError(f"stream {self.stream_id} has run already")
        self._task = asyncio.get_running_loop().create_task(self.run.produce(self.log.send))
        self._task.add_done_callback(self._produced)

    def _produced(self, task: asyncio.Task[None]) -> None:
        """A producer ends its log itself; if it died of a bug instead, the log still ends (with an `internal`
        error frame), or its watchers and a `POST /chat/streams` waiting for its answer would wait forever."""
        failure = None if task.cancelled() else task.exception()
        if failure is not None:
            logger.error("stream %s: its producer failed", self.stream_id, exc_info=failure)
        if not self.log.ended:
            self.log.abort(self.stream_id)
        # Its log is kept for the retention time (5 minutes by default); the run, with its admission, encoder and
        # upstream state, would be kept with it for nothing.
        self.run = None
        self._task = None

    async def stop_and_wait(self, seconds: float) -> None:
        """End the stream for a shutdown (its watchers get `cancel` `server_shutdown`) and wait for its end."""
        task, run = self._task, self.run
        if task is None or task.done() or run is None:
            return
        run.stop("server_shutdown")
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            async with asyncio.timeout(seconds):
                await asyncio.shield(task)

    async def opened(self) -> int:
        """The producer's answer: 200 once it committed to a target, else the refusal's status."""
        while self.log.status is None or (self.log.status != 200 and not self.log.ended):
            await self.log.wait(self.log.end)
        return self.log.status

    def attach(self) -> None:
        self.log.release_tail()  # two watchers: each follows the log in its own task
        self.log.watchers += 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def detach(self) -> None:
        self.log.watchers -= 1
        if self.log.watchers == 0 and not self.log.ended and not self._detached:
            self._arm_grace()

    def _arm_grace(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._grace, self._grace_over)

    def _grace_over(self) -> None:
        self._timer = None
        if self.log.watchers or self.log.ended:
            return
        if self._remote is None:
            self._stop()
        elif self._checking is None:
            self._checking = asyncio.get_running_loop().create_task(self._check_remote())

    async def _check_remote(self) -> None:
        try:
            watched = self._remote is not None and await self._remote(self.stream_id)
        except Exception as exc:  # the store is down: nobody can be seen watching from elsewhere
            logger.warning("stream %s: could not look for watchers on other replicas: %s", self.stream_id, exc)
            watched = False
        finally:
            self._checking = None
        if self.log.watchers or self.log.ended:
            return
        if watched:
            self._arm_grace()
        else:
            self._stop()

    def _stop(self) -> None:
        if self.run is not None:
            logger.info("stream %s: nobody came back within %.1f s; stopping it", self.stream_id, self._grace)
            self.run.stop("client")


class StreamLogs:
    """This replica's resumable streams by id: running, and ended within the retention time."""

    def __init__(self, settings: ResumeSettings) -> None:
        self._settings = settings
        self._streams: dict[str, ResumableStream] = {}
        self._expiries: dict[str, asyncio.TimerHandle] = {}
        # The shared store's flusher listens to both: a new stream is announced at once (a resume elsewhere may
        # come before its first flush), an ended one is written at once.
        self.on_add: list[Callable[[FrameLog], None]] = []
        self.on_end: list[Callable[[FrameLog], None]] = []

    def __len__(self) -> int:
        return len(self._streams)

    def add(self, stream: ResumableStream) -> None:
        self._streams[stream.stream_id] = stream
        for listener in self.on_add:
            listener(stream.log)

    def local(self, stream_id: str) -> ResumableStream | None:
        return self._streams.get(stream_id)

    def ended(self, log: FrameLog) -> None:
        """A producer's log got its terminal frame (or a refusal): kept for late resumes, then forgotten."""
        for listener in self.on_end:
            listener(log)
        if log.status != 200:
            self._streams.pop(log.stream_id, None)  # refused: there never was a stream to resume
            return
        loop = asyncio.get_running_loop()
        self._expiries[log.stream_id] = loop.call_later(self._settings.retention_seconds, self._forget, log.stream_id)

    def unflushed(self, *, running: bool = False) -> list[FrameLog]:
        """The logs the shared store has yet to hear of, or whose entries it has yet to get; `running`: every log
        whose stream still runs, too (the store renews their keys' time to live)."""
        return [
            log
            for log in (s.log for s in self._streams.values())
            if log.status in (None, 200) and (not log.announced or log.flushed < log.end or (running and not log.ended))
        ]

    def _forget(self, stream_id: str) -> None:
        self._expiries.pop(stream_id, None)
        self._streams.pop(stream_id, None)

    async def close(self) -> None:
        """At shutdown: streams still running end now (a server without a signal drain, such as an embedded one,
        has not stopped them), and the retained logs go."""
        running = [s for s in self._streams.values() if not s.log.ended]
        await asyncio.gather(*(s.stop_and_wait(FINAL_WRITE_SECONDS + 0.5) for s in running))
        for timer in self._expiries.values():
            timer.cancel()
        self._expiries.clear()
