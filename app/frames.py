"""The frames of a stream, independent of how a transport puts them on the wire.

A stream is `StartFrame`, then any number of `TokenFrame` / `ReasoningFrame` / `ToolCallFrame`, then exactly one
terminal frame (`DoneFrame`, `ErrorFrame` or `CancelFrame`). Each class's fields are its JSON `data`, encoded
compactly by msgspec; `event` is the SSE event name.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import msgspec

UsageSource = Literal["provider", "estimated", "partial"]


class Frame(msgspec.Struct, frozen=True):
    event: ClassVar[str]


class StartFrame(Frame, frozen=True):
    event: ClassVar[str] = "start"
    id: str
    model: str
    provider: str
    upstream_model: str
    created: int
    request_id: str


class TokenFrame(Frame, frozen=True):
    event: ClassVar[str] = "token"
    text: str


class ReasoningFrame(Frame, frozen=True):
    event: ClassVar[str] = "reasoning"
    text: str


class ToolCallFrame(Frame, frozen=True):
    event: ClassVar[str] = "tool_call"
    index: int
    id: str | None
    name: str | None
    arguments: str


class Usage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class DoneFrame(Frame, frozen=True):
    event: ClassVar[str] = "done"
    finish_reason: str
    usage: Usage
    usage_source: UsageSource


class ErrorFrame(Frame, frozen=True):
    event: ClassVar[str] = "error"
    code: str
    message: str
    retryable: bool
    request_id: str


class CancelFrame(Frame, frozen=True):
    event: ClassVar[str] = "cancel"
    reason: str
    retryable: bool = False
