"""The `/chat/stream` wire protocol (DESIGN section 3): each event a frame `id: <stream>.<seq>`."""

from __future__ import annotations

import msgspec

from app.frames import CancelFrame, DoneFrame, ErrorFrame, Frame, ReasoningFrame, StartFrame, TokenFrame, ToolCallFrame
from app.sse import PING, encode_json_event
from providers.base import Delta

SSE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    # no-transform keeps intermediaries from compressing or re-chunking; X-Accel-Buffering stops nginx buffering.
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
)

_encode = msgspec.json.Encoder().encode


class SSEEncoder:
    """One stream's frames; `retry:` rides on the first (start) event, so no block is meta-fields only."""

    headers = SSE_HEADERS
    keepalive = PING
    buffered = False

    def __init__(self, stream_id: str, retry_ms: int) -> None:
        self._stream_id = stream_id
        self._retry_ms = retry_ms
        self._seq = 0

    def start(self, frame: StartFrame) -> bytes:
        return self._frame(frame)

    def delta(self, delta: Delta) -> bytes:
        if delta.text and not (delta.reasoning or delta.tool_calls):
            return self._frame(TokenFrame(text=delta.text))  # the per-token case, without a list
        frames: list[bytes] = []
        if delta.reasoning:
            frames.append(self._frame(ReasoningFrame(text=delta.reasoning)))
        if delta.text:
            frames.append(self._frame(TokenFrame(text=delta.text)))
        for call in delta.tool_calls:
            frames.append(
                self._frame(ToolCallFrame(index=call.index, id=call.id, name=call.name, arguments=call.arguments))
            )
        return frames[0] if len(frames) == 1 else b"".join(frames)

    def end(self, frame: DoneFrame | ErrorFrame) -> bytes:
        return self._frame(frame)

    def cancel(self, frame: CancelFrame, error: ErrorFrame, retry_ms: int | None) -> bytes:
        return self._frame(frame, retry_ms)

    def _frame(self, frame: Frame, retry_ms: int | None = None) -> bytes:
        seq = self._seq
        self._seq += 1
        retry = self._retry_ms if seq == 0 else retry_ms
        return encode_json_event(frame.event, _encode(frame), id=f"{self._stream_id}.{seq}", retry_ms=retry)
