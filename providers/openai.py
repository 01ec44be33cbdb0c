"""OpenAI Chat Completions streaming, for OpenAI and every compatible server (vLLM, Ollama, LM Studio, Groq,
OpenRouter ...).

Usage is always asked for (`stream_options.include_usage`), whatever the client asked, so accounting never runs
blind. Events that arrive in one network read are merged into as few deltas as their order allows: when the
client is slower than the upstream, reads grow and frames get fewer and larger, never more numerous.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import msgspec

from app.errors import (
    ProxyError,
    UpstreamError,
    UpstreamModelNotFound,
    UpstreamRateLimited,
    UpstreamRejectedRequest,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from app.settings import OpenAIProviderSettings
from providers.base import ChatRequest, Delta, TokenUsage, ToolCallDelta
from providers.http_client import HttpClient, UpstreamResponse, UpstreamTimeouts
from providers.sse_decoder import ServerSentEvent, SSEDecoder

ERROR_BODY_LIMIT = 64 * 1024
DEFAULT_RETRY_AFTER_SECONDS = 1


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


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorInfo | str | None = None
    message: str | None = None


_decode_chunk = msgspec.json.Decoder(_Chunk).decode
_decode_error = msgspec.json.Decoder(_ErrorEnvelope).decode
_encode = msgspec.json.Encoder().encode


class OpenAIProvider:
    def __init__(self, settings: OpenAIProviderSettings, http: HttpClient) -> None:
        self._url = f"{settings.base_url}/chat/completions"
        self._http = http
        t = settings.timeouts
        self._timeouts = UpstreamTimeouts(connect=t.connect, first_byte=t.first_byte, read=t.read, pool=t.pool)
        headers = {"Content-Type": "application/json", "Accept": "text/event-stream", **settings.headers}
        if settings.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self._headers = headers

    @asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[AsyncGenerator[Delta, None]]:
        headers = {**self._headers, "X-Request-ID": request.request_id}
        async with self._http.post(
            self._url, headers=headers, body=_request_body(request), timeouts=self._timeouts
        ) as response:
            if response.status != 200:
                raise await _status_error(response, request.model)
            yield _deltas(response)

    async def open(self) -> None:
        await self._http.open()

    async def aclose(self) -> None:
        await self._http.aclose()


def _request_body(request: ChatRequest) -> bytes:
    body: dict[str, Any] = {
        "model": request.model,
        "messages": [{"role": m.role, "content": m.content} for m in request.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.temperature is not None:
        body["temperature"] = request.temperature
    if request.top_p is not None:
        body["top_p"] = request.top_p
    if request.stop is not None:
        body["stop"] = list(request.stop)
    return _encode(body)


async def _deltas(response: UpstreamResponse) -> AsyncGenerator[Delta, None]:
    decoder = SSEDecoder()
    finished = False
    async for raw in response.chunks():
        pending: list[Delta] = []
        failure: UpstreamError | None = None
        done = False
        for event in decoder.feed(raw):
            if event.data == "[DONE]":
                done = True
                break
            try:
                deltas = _event_deltas(event)
            except UpstreamError as error:
                failure = error  # relay what came before it first
                break
            for delta in deltas:
                finished = finished or delta.finish_reason is not None
                _append_merged(pending, delta)
        for delta in pending:
            yield delta
        if failure is not None:
            raise failure
        if done:
            if not finished:
                yield Delta(finish_reason="stop")
            return
    if not finished:
        raise UpstreamError("the upstream ended the stream without a finish reason or [DONE]")


def _event_deltas(event: ServerSentEvent) -> list[Delta]:
    if event.event == "error":
        raise UpstreamError(f"the upstream reported an error: {_error_message(event.data)}")
    return _chunk_deltas(event.data)


def _chunk_deltas(data: str) -> list[Delta]:
    try:
        chunk = _decode_chunk(data)
    except msgspec.DecodeError as exc:
        raise UpstreamError(f"the upstream sent a malformed chunk: {exc}") from None
    if chunk.error is not None:
        raise UpstreamError(f"the upstream reported an error: {chunk.error.message or 'no message'}")
    deltas: list[Delta] = []
    for choice in chunk.choices:
        if choice.index != 0:
            continue  # one answer per stream: n > 1 is refused at the API surface
        body = choice.delta
        if body is not None:
            reasoning = body.reasoning_content or body.reasoning
            if reasoning:
                deltas.append(Delta(reasoning=reasoning))
            if body.content:
                deltas.append(Delta(text=body.content))
            if body.tool_calls:
                deltas.append(Delta(tool_calls=tuple(_tool_call(c) for c in body.tool_calls)))
        if choice.finish_reason is not None:
            deltas.append(Delta(finish_reason=choice.finish_reason))
    if chunk.usage is not None:
        usage = TokenUsage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
        deltas.append(Delta(usage=usage))
    return deltas


def _tool_call(call: _ToolCall) -> ToolCallDelta:
    function = call.function or _Function()
    return ToolCallDelta(index=call.index, id=call.id, name=function.name, arguments=function.arguments or "")


def _append_merged(pending: list[Delta], delta: Delta) -> None:
    if pending:
        last = pending[-1]
        if delta.text and last.text and _only_text(last) and _only_text(delta):
            pending[-1] = Delta(text=last.text + delta.text)
            return
        if delta.reasoning and last.reasoning and _only_reasoning(last) and _only_reasoning(delta):
            pending[-1] = Delta(reasoning=last.reasoning + delta.reasoning)
            return
    pending.append(delta)


def _only_text(d: Delta) -> bool:
    return not (d.reasoning or d.tool_calls or d.finish_reason or d.usage)


def _only_reasoning(d: Delta) -> bool:
    return not (d.text or d.tool_calls or d.finish_reason or d.usage)


_STATUS_ERRORS: dict[int, tuple[type[ProxyError], str]] = {
    404: (UpstreamModelNotFound, "the upstream does not know the model"),
    408: (UpstreamTimeout, "the upstream timed out the request"),
}


async def _status_error(response: UpstreamResponse, model: str) -> ProxyError:
    status = response.status
    if status in (401, 403):
        # The upstream's explanation can quote (part of) the operator's key: it stays out of the response.
        return UpstreamError(f"the upstream refused tokenrelay's credentials ({status}); check the provider's api_key")
    detail = _error_message((await response.read(ERROR_BODY_LIMIT)).decode("utf-8", errors="replace"))
    if status == 429:
        retry_after = parse_retry_after(response.header("retry-after"))
        return UpstreamRateLimited(f"the upstream is rate limiting: {detail}", retry_after=retry_after)
    if status in _STATUS_ERRORS:
        error_class, summary = _STATUS_ERRORS[status]
        return error_class(f"{summary} (model {model!r}): {detail}")
    if status >= 500:
        return UpstreamUnavailable(f"the upstream failed ({status}): {detail}")
    if status >= 400:
        return UpstreamRejectedRequest(f"the upstream rejected the request ({status}): {detail}")
    return UpstreamError(f"the upstream answered with an unexpected status {status}")


def _error_message(body: str) -> str:
    try:
        envelope = _decode_error(body)
    except msgspec.DecodeError:
        return body.strip()[:500] or "no details"
    if isinstance(envelope.error, _ErrorInfo) and envelope.error.message:
        return envelope.error.message
    if isinstance(envelope.error, str):
        return envelope.error
    return envelope.message or body.strip()[:500] or "no details"


def parse_retry_after(value: str | None, *, now: float | None = None) -> int:
    """Whole seconds from a `Retry-After` header (seconds or an HTTP date), at least 1."""
    if value:
        try:
            return max(1, math.ceil(float(value)))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER_SECONDS
        return max(1, math.ceil(when - (time.time() if now is None else now)))
    return DEFAULT_RETRY_AFTER_SECONDS
