"""What every provider speaks: `ChatRequest` in, `Delta`s out.

A provider's `stream(request)` is an async context manager. Entering it sends the upstream request and returns
once the upstream has answered with success headers, raising an `app.errors.ProxyError` otherwise: that is the
moment before which a failure is still an HTTP status for the client. The value it yields iterates `Delta`s;
leaving it closes the upstream response on every path, including cancellation.

The iterator ends normally only when the upstream finished the answer: its last deltas carry the finish reason
(and usage, when the upstream reports it). A stream cut off or failing mid-way raises instead.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat request as providers see it: `model` is already the upstream's own model name."""

    model: str
    messages: tuple[Message, ...]
    request_id: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    index: int
    id: str | None
    name: str | None
    arguments: str


@dataclass(frozen=True, slots=True)
class TokenUsage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class Delta:
    """One step of an answer. Several upstream tokens that arrived together may be merged into one delta."""

    text: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: TokenUsage | None = None


class Provider(Protocol):
    """An upstream LLM API. One instance per configured provider, shared by all requests."""

    def stream(self, request: ChatRequest) -> AbstractAsyncContextManager[AsyncGenerator[Delta, None]]:
        """Open the upstream stream (see the module docstring for the phases)."""
        ...

    async def open(self) -> None:
        """Prepare pooled connections; called once at application startup."""
        ...

    async def aclose(self) -> None:
        """Release pooled connections; called once at application shutdown."""
        ...
