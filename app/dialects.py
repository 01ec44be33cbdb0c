"""The wire format a stream's log speaks, for the frames tokenrelay writes into it of its own accord.

A log holds its producer's bytes as they are: `/chat/stream` frames, or OpenAI chunks for a resumable
`/v1/chat/completions` stream. What no producer wrote (an ending for a producer that died, a watcher's word on its
own connection: it fell behind, its store failed) must speak the same format, or a client's parser would not know
it: an `event: error` frame for `/chat/stream`, a `data: {"error": ...}` line (what the OpenAI SDKs raise as
`APIError`) for OpenAI chunks.
"""

from __future__ import annotations

import enum

import msgspec

from app.errors import error_type
from app.frames import ErrorFrame
from app.sse import PING, PING_LINE, encode_json_data, encode_json_event, encode_json_event_without_id


class Dialect(enum.StrEnum):
    CHAT = "chat"
    OPENAI = "openai"

    def error_data(self, frame: ErrorFrame) -> bytes:
        """The JSON `data` of an error frame."""
        if self is Dialect.CHAT:
            return msgspec.json.encode(frame)
        return msgspec.json.encode(openai_error(frame))

    @property
    def keepalive(self) -> bytes:
        """What a watcher sends in a silence: an OpenAI client must never see a blank line on its own."""
        return PING if self is Dialect.CHAT else PING_LINE

    @property
    def error_fields(self) -> bytes:
        """The lines an error frame holds between its id and its data."""
        return b"event: error\n" if self is Dialect.CHAT else b""

    def error(self, frame: ErrorFrame, *, id: str | None = None) -> bytes:
        """An error frame: one of the stream's (`id`), or none of them, which no resume can name."""
        data = self.error_data(frame)
        if self is Dialect.OPENAI:
            return encode_json_data(data, id=id)
        if id is None:
            return encode_json_event_without_id("error", data)
        return encode_json_event("error", data, id=id)


def openai_error(frame: ErrorFrame) -> dict[str, dict[str, object]]:
    """An error as OpenAI's API words it (openai-python raises it as `APIError`, with its `code`), and whether
    the same request may succeed if tried again (OpenAI's own errors do not say; tokenrelay's frames do)."""
    return {
        "error": {
            "message": frame.message,
            "type": error_type(frame.code),
            "param": None,
            "code": frame.code,
            "request_id": frame.request_id,
            "retryable": frame.retryable,
        }
    }
