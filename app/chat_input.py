"""The `/chat/stream` request: validated from a JSON body (POST) or query parameters (GET).

Every failure is an `InvalidRequest` naming the offending field, so the client gets a 4xx that says what to fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, model_validator

from app.errors import InvalidRequest
from app.json_body import json_object, validated
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
    # POST: the stream outlives its connection (for the grace period) and can be resumed with Last-Event-ID.
    resumable: StrictBool = False

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
    return validated(ChatInput, json_object(body, content_type))


# Query parameters a client might put a key in: refused by name, never read (URLs end up in logs and histories).
CREDENTIAL_PARAMETERS = frozenset({"api_key", "apikey", "key", "access_token", "token", "authorization"})


def parse_query(params: Mapping[str, str]) -> ChatInput:
    for name in params:
        if name.lower() in CREDENTIAL_PARAMETERS:
            raise InvalidRequest(
                f"{name}: keys are never accepted in the URL; send Authorization: Bearer <key> or X-API-Key, "
                "or (EventSource) log in with POST /auth/session",
                field=name,
                status=400,
            )
    # A GET stream is resumable whatever the URL says (EventSource reconnects by itself): the flag is for bodies.
    return validated(ChatInput, {k: v for k, v in params.items() if k != "resumable"})
