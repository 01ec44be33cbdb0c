"""The Anthropic Messages API, streamed (`POST /v1/messages`, `stream: true`), translated to `Delta`s.

Requests: system messages become the top-level `system`; consecutive turns of one role are merged (the API wants
them alternating); OpenAI tool definitions, tool calls and tool results become `tools`, `tool_use` and
`tool_result` blocks. Responses: `text_delta` → text, `thinking_delta` → reasoning, `tool_use` blocks and their
`input_json_delta`s → tool-call deltas numbered from 0 in order of appearance, `message_delta` → finish reason and
usage, `ping` ignored, a mid-stream `error` event → a retryable `UpstreamError`.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import msgspec

from app.errors import UpstreamError
from app.settings import AnthropicProviderSettings
from providers.base import ChatRequest, Delta, Message, TokenUsage, ToolCallDelta, UpstreamTimeouts
from providers.http_client import HttpClient, UpstreamResponse
from providers.http_stream import HttpStream
from providers.sse_decoder import SSEDecoder
from providers.upstream_errors import UpstreamErrors

STOP_REASONS = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "pause_turn": "stop",
    "refusal": "content_filter",
}

_encode = msgspec.json.Encoder().encode


class _Block(msgspec.Struct):
    type: str = ""
    id: str | None = None
    name: str | None = None


class _BlockDelta(msgspec.Struct):
    type: str = ""
    text: str | None = None
    thinking: str | None = None
    partial_json: str | None = None
    stop_reason: str | None = None


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None


class _Message(msgspec.Struct):
    usage: _Usage | None = None


class _Event(msgspec.Struct):
    type: str = ""
    index: int = 0
    content_block: _Block | None = None
    delta: _BlockDelta | None = None
    usage: _Usage | None = None
    message: _Message | None = None


_decode_event = msgspec.json.Decoder(_Event).decode


class AnthropicProvider:
    def __init__(self, settings: AnthropicProviderSettings, http: HttpClient, errors: UpstreamErrors) -> None:
        self._url = f"{settings.base_url}/v1/messages"
        self._http = http
        self._errors = errors
        self._default_max_tokens = settings.default_max_tokens
        t = settings.timeouts
        self._timeouts = UpstreamTimeouts(connect=t.connect, first_byte=t.first_byte, read=t.read, pool=t.pool)
        headers = {
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            "anthropic-version": settings.version,
            **settings.headers,
        }
        if settings.api_key is not None:
            headers["x-api-key"] = settings.api_key.get_secret_value()
        self._headers = headers

    async def open(self) -> None:
        await self._http.open()

    async def aclose(self) -> None:
        await self._http.aclose()

    def stream(self, request: ChatRequest) -> HttpStream:
        headers = {**self._headers, "X-Request-ID": request.request_id}
        body = _encode(request_body(request, self._default_max_tokens))
        timeouts = request.timeouts or self._timeouts
        return HttpStream(
            self._http.post(self._url, headers=headers, body=body, timeouts=timeouts),
            _deltas,
            self._errors,
            request.model,
        )


def request_body(request: ChatRequest, default_max_tokens: int) -> dict[str, Any]:
    """The Messages API body for a chat request (public for tests)."""
    system = "\n\n".join(m.text() for m in request.messages if m.role in ("system", "developer"))
    body: dict[str, Any] = {
        "model": request.model,
        "max_tokens": request.max_tokens or default_max_tokens,
        "messages": _turns(m for m in request.messages if m.role not in ("system", "developer")),
        "stream": True,
    }
    if system:
        body["system"] = system
    if request.temperature is not None:
        body["temperature"] = min(request.temperature, 1.0)  # Anthropic's range is 0..1
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    if request.tools:
        body["tools"] = [_tool(t) for t in request.tools]
    choice = _tool_choice(request.tool_choice)
    if choice is not None:
        body["tool_choice"] = choice
    return body


def _turns(messages: Any) -> list[dict[str, Any]]:
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = "assistant" if message.role == "assistant" else "user"
        blocks = _blocks(message)
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    return turns


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [{"type": "tool_result", "tool_use_id": message.tool_call_id or "", "content": message.text()}]
    blocks: list[dict[str, Any]] = []
    if isinstance(message.content, str):
        if message.content:
            blocks.append({"type": "text", "text": message.content})
    else:
        blocks.extend(_part(p) for p in message.content or ())
    for call in message.tool_calls:
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            arguments = {"arguments": call.arguments}
        blocks.append({"type": "tool_use", "id": call.id, "name": call.name, "input": arguments})
    return blocks


def _part(part: Mapping[str, Any]) -> dict[str, Any]:
    if part.get("type") == "image_url":
        url = str((part.get("image_url") or {}).get("url", ""))
        if url.startswith("data:") and ";base64," in url:
            media_type, data = url[5:].split(";base64,", 1)
            return {"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}}
        return {"type": "image", "source": {"type": "url", "url": url}}
    return {"type": "text", "text": str(part.get("text", ""))}


def _tool(tool: Mapping[str, Any]) -> dict[str, Any]:
    function = tool.get("function") or {}
    out = {"name": function.get("name", ""), "input_schema": function.get("parameters") or {"type": "object"}}
    if function.get("description"):
        out["description"] = function["description"]
    return out


def _tool_choice(choice: Any) -> dict[str, Any] | None:
    if choice in (None, "auto"):
        return None if choice is None else {"type": "auto"}
    if choice == "required":
        return {"type": "any"}
    if choice == "none":
        return {"type": "none"}
    if isinstance(choice, Mapping):
        name = (choice.get("function") or {}).get("name")
        return {"type": "tool", "name": name} if name else None
    return None


async def _deltas(response: UpstreamResponse, errors: UpstreamErrors) -> AsyncGenerator[Delta, None]:
    decoder = SSEDecoder()
    message = _MessageStream(errors)
    async for raw in response.chunks():
        events = decoder.feed(raw)
        del raw  # nothing of a read is kept while the next is awaited (as in `providers.openai`)
        for event in events:
            deltas = message.feed(event.event, event.data)
            del event
            if message.stopped:
                response.end()  # before the last deltas: the relay may close this generator once it has them
            for delta in deltas:
                yield delta
                del delta
            if message.stopped:
                return
            del deltas
        del events
    raise UpstreamError("the upstream ended the stream before message_stop")


class _MessageStream:
    """The state of one streamed message: which content blocks are tool calls, tokens in, the stop reason."""

    def __init__(self, errors: UpstreamErrors) -> None:
        self._errors = errors
        self.stopped = False
        self._tool_index: dict[int, int] = {}  # content block index -> tool call index
        self._input_tokens = 0
        self._finish_reason: str | None = None

    def feed(self, name: str, data: str) -> list[Delta]:
        if name == "ping":
            return []
        if name == "error":
            raise self._errors.reported(data)
        try:
            event = _decode_event(data)
        except msgspec.DecodeError as exc:
            raise UpstreamError(f"the upstream sent a malformed event: {exc}") from None
        kind = event.type or name
        if kind == "message_start" and event.message and event.message.usage:
            self._input_tokens = event.message.usage.input_tokens or 0
        elif kind == "content_block_start" and event.content_block and event.content_block.type == "tool_use":
            index = self._tool_index.setdefault(event.index, len(self._tool_index))
            block = event.content_block
            return [Delta(tool_calls=(ToolCallDelta(index=index, id=block.id, name=block.name, arguments=""),))]
        elif kind == "content_block_delta" and event.delta is not None:
            delta = _content_delta(event.delta, self._tool_index.get(event.index))
            return [] if delta is None else [delta]
        elif kind == "message_delta":
            return [self._message_delta(event)]
        elif kind == "message_stop":
            self.stopped = True
            return [] if self._finish_reason is not None else [Delta(finish_reason="stop")]
        return []

    def _message_delta(self, event: _Event) -> Delta:
        if event.delta is not None and event.delta.stop_reason is not None:
            self._finish_reason = STOP_REASONS.get(event.delta.stop_reason, "stop")
        usage = event.usage or _Usage()
        tokens = TokenUsage(usage.input_tokens or self._input_tokens, usage.output_tokens or 0)
        return Delta(finish_reason=self._finish_reason, usage=tokens)


def _content_delta(delta: _BlockDelta, tool: int | None) -> Delta | None:
    if delta.type == "text_delta" and delta.text:
        return Delta(text=delta.text)
    if delta.type == "thinking_delta" and delta.thinking:
        return Delta(reasoning=delta.thinking)
    if delta.type == "input_json_delta" and tool is not None and delta.partial_json:
        return Delta(tool_calls=(ToolCallDelta(index=tool, id=None, name=None, arguments=delta.partial_json),))
    return None  # signature_delta and empty deltas carry nothing a client can use
