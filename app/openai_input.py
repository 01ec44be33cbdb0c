"""The `POST /v1/chat/completions` request, validated: what OpenAI clients send, refused with the field named.

Fields tokenrelay does not model (`response_format`, `seed`, `user`, `logprobs`, ...) are kept and reach an
OpenAI-compatible upstream unchanged, so clients that use them keep working.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from app.errors import InvalidRequest
from app.json_body import json_object, validated
from providers.base import Message, ToolCall

MAX_STOP_SEQUENCES = 4
MAX_TOKENS = 1_000_000  # beyond any model's output; a larger value is a client bug, not a request


class _Function(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    arguments: str = ""


class _ToolCallIn(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    type: Literal["function"] = "function"
    function: _Function


class _MessageIn(BaseModel):
    model_config = ConfigDict(frozen=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[_ToolCallIn] | None = None
    tool_call_id: str | None = None

    @model_validator(mode="after")
    def _content_or_tool_calls(self) -> _MessageIn:
        if self.content is None and not self.tool_calls:
            raise ValueError("a message needs `content` (or, from the assistant, `tool_calls`)")
        if self.role == "tool" and not self.tool_call_id:
            raise ValueError("a tool message needs `tool_call_id`")
        return self

    def to_message(self) -> Message:
        content = self.content if not isinstance(self.content, list) else tuple(self.content)
        calls = tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in self.tool_calls or ())
        return Message(self.role, content, self.name, calls, self.tool_call_id)


class _StreamOptions(BaseModel):
    model_config = ConfigDict(frozen=True)

    include_usage: bool = False


class ChatCompletionInput(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    messages: list[_MessageIn] = Field(min_length=1)
    model: str | None = Field(default=None, min_length=1, max_length=256)
    stream: bool = False
    stream_options: _StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    # tokenrelay's own: the stream goes on after its client leaves, and its chunks carry ids to resume from.
    resumable: StrictBool = False

    @model_validator(mode="after")
    def _checks(self) -> ChatCompletionInput:
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP_SEQUENCES:
            raise ValueError(f"`stop` takes at most {MAX_STOP_SEQUENCES} sequences")
        return self

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def conversation(self) -> tuple[Message, ...]:
        return tuple(m.to_message() for m in self.messages)

    def stop_sequences(self) -> tuple[str, ...] | None:
        if self.stop is None:
            return None
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)

    def passthrough(self) -> dict[str, Any]:
        """Request fields an OpenAI-compatible upstream should receive as the client sent them."""
        extra = dict(self.model_extra or {})
        if self.max_completion_tokens is not None:
            extra["max_completion_tokens"] = self.max_completion_tokens
        return extra


def parse_chat_completion(body: bytes, content_type: str | None) -> ChatCompletionInput:
    parsed = validated(ChatCompletionInput, json_object(body, content_type))
    if parsed.n is not None and parsed.n > 1:
        # Several choices would have to be streamed side by side; merging them would corrupt every one.
        raise InvalidRequest("n: only n=1 is supported", field="n", status=400)
    if parsed.stream_options is not None and not parsed.stream:
        raise InvalidRequest("stream_options: only allowed when stream is true", field="stream_options", status=400)
    if parsed.resumable and not parsed.stream:
        # One JSON body at the end has nothing to resume from.
        raise InvalidRequest("resumable: only allowed when stream is true", field="resumable", status=400)
    return parsed
