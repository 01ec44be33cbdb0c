"""`StreamEncoder`: one stream's wire protocol, the one thing a `StreamRun` asks of a transport."""

from __future__ import annotations

from typing import Protocol

from app.frames import CancelFrame, DoneFrame, ErrorFrame, StartFrame
from providers.base import Delta


class StreamEncoder(Protocol):
    """One stream's wire protocol (SSE frames, OpenAI chunks ...): events in, bytes out. One per stream."""

    headers: tuple[tuple[bytes, bytes], ...]
    keepalive: bytes
    # True: the whole answer is collected and sent at the end (a non-stream API), with its real status.
    buffered: bool

    def start(self, frame: StartFrame) -> bytes: ...

    def delta(self, delta: Delta) -> bytes: ...

    def end(self, frame: DoneFrame | ErrorFrame) -> bytes: ...

    def cancel(self, frame: CancelFrame, error: ErrorFrame, retry_ms: int | None) -> bytes:
        """The terminal bytes of a stream stopped from outside (`frame`, or `error` where there is no cancel)."""
        ...
