"""The `/chat/stream` request: validated from a JSON body (POST) or query parameters (GET).

Every failure is an `InvalidRequest` naming the offending field, so the client gets a 4xx that says what to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import msgspec
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from app.errors import InvalidRequest
from providers.base import Message

MAX_STOP_SEQUENCES = 4


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"]
    content: str


class ChatInput(BaseModel):
    """What a client may send to `/chat/stream`: `messages` or `prompt`, plus sampling options."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    prompt: str | None = Field(default=None, min_length=1)
    system: str | None = None
    model: str | None = Field(default=None, min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1, le=1_000_000)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, ge=0, le=1)
    stop: str | list[str] | None = None

    @model_validator(mode="after")
    def _one_source_of_messages(self) -> ChatInput:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("send exactly one of `messages` or `prompt`")
        if isinstance(self.stop, list) and not 1 <= len(self.stop) <= MAX_STOP_SEQUENCES:
            raise ValueError(f"`stop` takes 1 to {MAX_STOP_SEQUENCES} sequences")
        return self

    def conversation(self) -> tuple[Message, ...]:
        messages: list[Message] = []
        if self.system is not None:
            messages.append(Message("system", self.system))
        if self.prompt is not None:
            messages.append(Message("user", self.prompt))
        messages.extend(Message(m.role, m.content) for m in self.messages or ())
        return tuple(messages)

    def stop_sequences(self) -> tuple[str, ...] | None:
        if self.stop is None:
            return None
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


def parse_json_body(body: bytes, content_type: str | None) -> ChatInput:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        # Requiring JSON also keeps cross-site HTML forms (which cannot send it without CORS) from starting streams.
        raise InvalidRequest(
            "the body must be JSON sent as `Content-Type: application/json`", field="content-type", status=415
        )
    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:
        raise InvalidRequest(f"the body is not valid JSON: {exc}", field="body") from None
    if not isinstance(data, dict):
        raise InvalidRequest("the body must be a JSON object", field="body")
    return _validate(data)


def parse_query(params: Mapping[str, str]) -> ChatInput:
    return _validate(dict(params))


def _validate(data: dict[str, Any]) -> ChatInput:
    try:
        return ChatInput.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "body"
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        message = message.removeprefix("Value error, ")
        if not first["loc"]:
            field = "messages" if "messages" in message else "body"
        raise InvalidRequest(f"{field}: {message}", field=field) from None
