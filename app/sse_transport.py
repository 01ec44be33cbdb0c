"""Frames as `text/event-stream`: the `/chat/stream` wire protocol (DESIGN section 3)."""

from __future__ import annotations

import msgspec

from app.frames import Frame
from app.sse import PING, encode_json_event

SSE_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    # no-transform keeps intermediaries from compressing or re-chunking; X-Accel-Buffering stops nginx buffering.
    (b"cache-control", b"no-cache, no-transform"),
    (b"x-accel-buffering", b"no"),
)


class SSETransport:
    """Encodes each frame as one event `id: <stream>.<seq>`; `retry:` rides on the first one."""

    headers = SSE_HEADERS
    keepalive = PING

    def __init__(self, retry_ms: int) -> None:
        self._retry_ms = retry_ms
        self._encode = msgspec.json.Encoder().encode

    def encode(self, frame: Frame, frame_id: str, seq: int) -> bytes:
        retry = self._retry_ms if seq == 0 else None
        return encode_json_event(frame.event, self._encode(frame), id=frame_id, retry_ms=retry)
