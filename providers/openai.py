"""OpenAI Chat Completions streaming, for OpenAI and every compatible server (vLLM, Ollama, LM Studio, Groq,
OpenRouter ...).

Usage is always asked for (`stream_options.include_usage`), whatever the client asked, so accounting never runs
blind. Events that arrive in one network read are merged into as few deltas as their order allows: when the
client is slower than the upstream, reads grow and frames get fewer and larger, never more numerous.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any

import msgspec

from app.errors import UpstreamError
from app.settings import OpenAIProviderSettings
from providers.base import ChatRequest, Delta, Message, TokenUsage, ToolCallDelta, UpstreamTimeouts
from providers.http_client import HttpClient, UpstreamResponse
from providers.http_stream import HttpStream
from providers.sse_decoder import ServerSentEvent, SSEDecoder
from providers.upstream_errors import UpstreamErrors


class _Function(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class _ToolCall(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: _Function | None = None


class _DeltaBody(msgspec.Struct):
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[_ToolCall] | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    delta: _DeltaBody | None = None
    finish_reason: str | None = None


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _ErrorInfo(msgspec.Struct):
    message: str = ""


class _Chunk(msgspec.Struct):
    choices: list[_Choice] = []
    usage: _Usage | None = None
    error: _ErrorInfo | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_encode = msgspec.json.Encoder().encode


class OpenAIProvider:
    def __init__(self, settings: OpenAIProviderSettings, http: HttpClient, errors: UpstreamErrors) -> None:
        self._url = f"{settings.base_url}/chat/completions"
        self._http = http
        self._errors = errors
        t = settings.timeouts
        self._timeouts = UpstreamTimeouts(connect=t.connect, first_byte=t.first_byte, read=t.read, pool=t.pool)
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream", **settings.headers}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._headers = headers

    def stream(self, request: ChatRequest) -> HttpStream:
        headers = {**self._headers, "X-Request-ID": request.request_id}
        timeouts = request.timeouts or self._timeouts
        return HttpStream(
            self._http.post(self._url, headers=headers, body=_request_body(request), timeouts=timeouts),
            _deltas,
            self._errors,
            request.model,
        )

    async def open(self) -> None:
        await self._http.open()

    async def aclose(self) -> None:
        await self._http.aclose()


def _request_body(request: ChatRequest) -> bytes:
    body: dict[str, Any] = {
        **request.extra,
        "model": request.model,
        "messages": [_message(m) for m in request.messages],
        "stream": True,
        # Always asked, whatever the client asked: usage feeds accounting (the API strips it if not wanted).
        "stream_options": {"include_usage": True},
    }
    if request.tools:
        body["tools"] = list(request.tools)
    if request.tool_choice is not None:
        body["tool_choice"] = request.tool_choice
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop is not None:
        body["stop"] = list(request.stop)
    return _encode(body)


def _message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if isinstance(message.content, tuple):
        out["content"] = list(message.content)
    if message.name is not None:
        out["name"] = message.name
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


async def _deltas(response: UpstreamResponse, errors: UpstreamErrors) -> AsyncGenerator[Delta, None]:
    decoder = SSEDecoder()
    finished = False
    async for raw in response.chunks():
        pending, failure, done = _read(decoder.feed(raw), errors)
        # An open stream waits for its next read far longer than it works on one: while it waits, it keeps
        # nothing of this one (its bytes and its last delta were half a KiB of each open stream).
        del raw
        if done:
            response.end()  # before the last deltas: the relay may close this generator once it has them
        for delta in pending:
            finished = finished or delta.finish_reason is not None
            yield delta
            del delta
        del pending
        if failure is not None:
            raise failure
        if done:
            if not finished:
                yield Delta(finish_reason="stop")
            return
    if not finished:
        raise UpstreamError("the upstream ended the stream without a finish reason or [DONE]")


def _read(events: list[ServerSentEvent], errors: UpstreamErrors) -> tuple[list[Delta], UpstreamError | None, bool]:
    """The deltas of one read; the failure that ended it, after what came before it; whether `[DONE]` came.

    Tokens read together leave as one delta: a run of text-only (or reasoning-only) chunks is collected and
    joined once, when something else comes or the read ends (never rebuilt per event). A read carries hundreds
    of events at full speed, so the common chunk is recognised by one call, with no `Delta` of its own."""
    pending: list[Delta] = []
    texts: list[str] = []  # the run being collected: its pieces of text (or reasoning) and its chunks
    raws: list[bytes] = []
    reasoning_run = False
    for event in events:
        piece = _plain_piece(event)
        if isinstance(piece, tuple):
            text, reasoning = piece
            if raws and reasoning != reasoning_run:
                _append(pending, _run_delta(texts, raws, reasoning_run))
                texts, raws = [], []
            reasoning_run = reasoning
            texts.append(text)
            raws.append(event.payload)
            continue
        if raws:
            _append(pending, _run_delta(texts, raws, reasoning_run))
            texts, raws = [], []
        if event.payload == b"[DONE]":
            return pending, None, True
        try:
            _append(pending, _event_delta(event, errors) if piece is None else _delta_of(piece, event.payload, errors))
        except UpstreamError as error:
            return pending, error, False
    if raws:
        _append(pending, _run_delta(texts, raws, reasoning_run))
    return pending, None, False


def _append(pending: list[Delta], delta: Delta) -> None:
    """Add `delta` to its read's deltas, folded into the one before it when either of them carries no content
    (a role-only chunk, a finish-only one): the relay writes a read's deltas one by one, and at a stream's end
    these were a write each. A chunk with usage stays on its own: the `/v1` encoder drops a usage-only one for a
    client that did not ask for usage."""
    if pending:
        last = pending[-1]
        if (
            (_bare(last) or _bare(delta))
            and last.usage is None
            and delta.usage is None
            and not (last.finish_reason and delta.finish_reason)
        ):
            pending[-1] = Delta(
                text=last.text or delta.text,
                reasoning=last.reasoning or delta.reasoning,
                tool_calls=last.tool_calls or delta.tool_calls,
                finish_reason=last.finish_reason or delta.finish_reason,
                raw=last.raw + delta.raw,
            )
            return
    pending.append(delta)


def _bare(delta: Delta) -> bool:
    return not (delta.text or delta.reasoning or delta.tool_calls)


def _plain_piece(event: ServerSentEvent) -> tuple[str, bool] | _Chunk | None:
    """`(text, is_reasoning)` of the common chunk: one choice carrying text alone or reasoning alone, in valid
    UTF-8 (invalid bytes take the general path, which repairs them). Any other chunk it decoded comes back as
    decoded, so that it is not decoded twice (a role, a finish, usage); None for anything else."""
    data = event.payload
    if event.event != "message" or data == b"[DONE]" or not _valid_utf8(data):
        return None
    try:
        chunk = _decode_chunk(data)
    except msgspec.DecodeError:
        return None  # the general path reports it
    only = chunk.choices[0] if len(chunk.choices) == 1 and chunk.usage is None and chunk.error is None else None
    body = only.delta if only is not None and only.index == 0 and only.finish_reason is None else None
    if body is None or body.tool_calls:
        return chunk
    thought = body.reasoning_content or body.reasoning
    if bool(body.content) == bool(thought):  # neither, or both: a delta of its own
        return chunk
    return (body.content, False) if body.content else (thought or "", True)


def _valid_utf8(data: bytes) -> bool:
    if data.isascii():  # most chunks are (JSON escapes): the check costs nothing for them
        return True
    try:
        data.decode()
    except UnicodeDecodeError:
        return False
    return True


def _run_delta(texts: list[str], raws: list[bytes], reasoning: bool) -> Delta:
    joined = texts[0] if len(texts) == 1 else "".join(texts)
    return Delta(reasoning=joined, raw=tuple(raws)) if reasoning else Delta(text=joined, raw=tuple(raws))


def _event_delta(event: ServerSentEvent, errors: UpstreamErrors) -> Delta:
    if event.event == "error":
        raise errors.reported(event.data)
    return _chunk_delta(event.payload, errors)


def _chunk_delta(data: bytes, errors: UpstreamErrors) -> Delta:
    """One chunk as one delta, carrying the chunk's own bytes for lossless pass-through."""
    if not data.isascii():  # most chunks are ASCII (JSON escapes): the check costs nothing for them
        try:
            data.decode()
        except UnicodeDecodeError:
            # Invalid UTF-8 is read as U+FFFD, as a text decoder would, and relayed so: a client gets valid UTF-8.
            data = data.decode("utf-8", errors="replace").encode()
    try:
        chunk = _decode_chunk(data)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"the upstream sent a malformed chunk: {exc}") from None
    return _delta_of(chunk, data, errors)


def _delta_of(chunk: _Chunk, data: bytes, errors: UpstreamErrors) -> Delta:
    """The delta of a decoded chunk of valid UTF-8 `data`."""
    if chunk.error is not None:
        raise errors.reported(data.decode("utf-8", errors="replace"))
    text = reasoning = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    for choice in chunk.choices:
        if choice.index != 0:
            continue  # one answer per stream: n > 1 is refused at the API surface
        body = choice.delta
        if body is not None:
            reasoning = body.reasoning_content or body.reasoning or ""
            text = body.content or ""
            if body.tool_calls:
                tool_calls = tuple(_tool_call(c) for c in body.tool_calls)
        finish_reason = choice.finish_reason
    usage = None if chunk.usage is None else TokenUsage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
    return Delta(text, reasoning, tool_calls, finish_reason, usage, (data,))


def _tool_call(call: _ToolCall) -> ToolCallDelta:
    function = call.function or _Function()
    return ToolCallDelta(index=call.index, id=call.id, name=function.name, arguments=function.arguments or "")
