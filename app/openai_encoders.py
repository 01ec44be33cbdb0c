"""The OpenAI Chat Completions wire format, streamed (`chat.completion.chunk`) and whole (`chat.completion`).

Streamed: an upstream that speaks this dialect has its chunks relayed byte for byte (so tool-call indexes,
`reasoning_content` and fields tokenrelay does not model survive); other providers' deltas are written as chunks.
The usage-only chunk reaches the client only if it asked (`stream_options.include_usage`), before `data: [DONE]`.
A failure after the first chunk is one `data: {"error": {...}}` line (what openai-python raises as `APIError`),
then the end, with no `[DONE]`.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.dialects import openai_error
from app.errors import UpstreamError
from app.frames import CancelFrame, DoneFrame, ErrorFrame, StartFrame
from app.sse import PING, PING_LINE, encode_data_events, encode_json_data, number_events
from app.sse_transport import SSE_HEADERS
from providers.base import Delta

_encode = msgspec.json.Encoder().encode
# A whole answer held for a non-stream request, in characters: far beyond any model's output (1M tokens are about
# 4M characters), and bounded.
MAX_ANSWER_CHARS = 16 * 1024 * 1024
_DONE = b"data: [DONE]\n\n"


def _data(payload: Any) -> bytes:
    return encode_json_data(_encode(payload))


class OpenAIChunkEncoder:
    headers = SSE_HEADERS
    # A comment line: openai-python's decoder skips it, and with no id/event/retry fields sent (an unresumable
    # stream) the blank line after it dispatches nothing either; a resumable stream's ids make it a comment alone.
    keepalive = PING
    buffered = False

    def __init__(
        self, stream_id: str, public_model: str, created: int, include_usage: bool, *, resumable: bool = False
    ) -> None:
        self._id = f"chatcmpl-{stream_id}"
        # Resumable: each event carries `id: <stream>.<seq>` as `/chat/stream` frames do, for `Last-Event-ID`.
        self._stream_id = stream_id if resumable else None
        if resumable:
            self.keepalive = PING_LINE  # ids are sent: a blank line alone would be an empty event
        self._seq = 0
        self._model = public_model
        self._created = created
        self._include_usage = include_usage
        self._passthrough: bool | None = None
        self._usage_sent = False
        self._role_sent = False

    def start(self, frame: StartFrame) -> bytes:
        return b""

    def delta(self, delta: Delta) -> bytes:
        if self._passthrough is None:
            self._passthrough = bool(delta.raw)
        if self._passthrough:
            return self._numbered(self._relay(delta))
        return self._numbered(self._chunk(delta))

    def _numbered(self, body: bytes) -> bytes:
        if self._stream_id is None or not body:
            return body
        body, self._seq = number_events(body, self._stream_id, self._seq)
        return body

    def _relay(self, delta: Delta) -> bytes:
        if not delta.raw:
            return b""  # made up by the provider (e.g. a finish after a bare [DONE]); its text is already out
        usage_only = delta.usage is not None and not (
            delta.text or delta.reasoning or delta.tool_calls or delta.finish_reason
        )
        if usage_only:
            if not self._include_usage:
                return b""
            self._usage_sent = True
        # The upstream's own text, as its events carried it: a `data` of several lines stays several lines.
        return encode_data_events(delta.raw)

    def _chunk(self, delta: Delta) -> bytes:
        body: dict[str, Any] = {}
        if not self._role_sent:
            body["role"] = "assistant"
            self._role_sent = True
        if delta.reasoning:
            body["reasoning_content"] = delta.reasoning
        if delta.text:
            body["content"] = delta.text
        if delta.tool_calls:
            body["tool_calls"] = [_tool_call_delta(c.index, c.id, c.name, c.arguments) for c in delta.tool_calls]
        if not body and delta.finish_reason is None:
            return b""
        choice = {"index": 0, "delta": body, "logprobs": None, "finish_reason": delta.finish_reason}
        return _data(self._envelope([choice]))

    def _envelope(self, choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> dict[str, Any]:
        chunk: dict[str, Any] = {
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": choices,
        }
        if self._include_usage:
            chunk["usage"] = usage
        return chunk

    def end(self, frame: DoneFrame | ErrorFrame) -> bytes:
        if isinstance(frame, ErrorFrame):
            return self._numbered(_data(openai_error(frame)))
        if self._include_usage and not self._usage_sent:
            usage = msgspec.structs.asdict(frame.usage)
            return self._numbered(_data(self._envelope([], usage)) + _DONE)
        return self._numbered(_DONE)

    def cancel(self, frame: CancelFrame, error: ErrorFrame, retry_ms: int | None) -> bytes:
        # OpenAI's stream has no cancel event: the SDKs raise the error line as `APIError` with its code.
        return self._numbered(_data(openai_error(error)))


def _tool_call_delta(index: int, call_id: str | None, name: str | None, arguments: str) -> dict[str, Any]:
    out: dict[str, Any] = {"index": index}
    if call_id is not None:
        out["id"] = call_id
        out["type"] = "function"
    function: dict[str, str] = {"arguments": arguments}
    if name is not None:
        function["name"] = name
    out["function"] = function
    return out


class CompletionEncoder:
    """Collects a stream into one `chat.completion` body, sent when the answer is complete."""

    headers: tuple[tuple[bytes, bytes], ...] = ((b"content-type", b"application/json"),)
    keepalive = b""
    buffered = True

    def __init__(self, stream_id: str, created: int, max_bytes: int = MAX_ANSWER_CHARS) -> None:
        self._id = f"chatcmpl-{stream_id}"
        self._created = created
        self._max = max_bytes
        self._size = 0
        self._model = ""
        self._text: list[str] = []
        self._reasoning: list[str] = []
        self._calls: dict[int, dict[str, Any]] = {}

    def start(self, frame: StartFrame) -> bytes:
        self._model = frame.upstream_model
        return b""

    def delta(self, delta: Delta) -> bytes:
        self._size += len(delta.text) + len(delta.reasoning) + sum(len(c.arguments) for c in delta.tool_calls)
        if self._size > self._max:
            raise UpstreamError(f"the answer is over {self._max} characters; ask for it with stream: true")
        if delta.text:
            self._text.append(delta.text)
        if delta.reasoning:
            self._reasoning.append(delta.reasoning)
        for part in delta.tool_calls:
            call = self._calls.setdefault(
                part.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
            )
            call["id"] += part.id or ""
            call["function"]["name"] += part.name or ""
            call["function"]["arguments"] += part.arguments
        return b""

    def cancel(self, frame: CancelFrame, error: ErrorFrame, retry_ms: int | None) -> bytes:
        return b""  # never called: nothing is committed before the end, so a stop becomes a real status

    def end(self, frame: DoneFrame | ErrorFrame) -> bytes:
        if isinstance(frame, ErrorFrame):
            return _encode(openai_error(frame))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self._text) or None}
        if self._reasoning:
            message["reasoning_content"] = "".join(self._reasoning)
        if self._calls:
            message["tool_calls"] = [self._calls[i] for i in sorted(self._calls)]
        completion = {
            "id": self._id,
            "object": "chat.completion",
            "created": self._created,
            "model": self._model,
            "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": frame.finish_reason}],
            "usage": msgspec.structs.asdict(frame.usage),
        }
        return _encode(completion)
