"""What every provider speaks: `ChatRequest` in, `Delta`s out.

A provider's `stream(request)` is an async context manager. Entering it sends the upstream request and returns
once the upstream has answered with success headers, raising an `app.errors.ProxyError` otherwise: that is the
moment before which a failure is still an HTTP status for the client. The value it yields iterates `Delta`s;
leaving it closes the upstream response on every path, including cancellation.

The iterator ends normally only when the upstream finished the answer: its last deltas carry the finish reason
(and usage, when the upstream reports it). A stream cut off or failing mid-way raises instead.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec


@dataclass(frozen=True, slots=True)
class UpstreamTimeouts:
    """Seconds. `read` is the longest idle gap allowed between two body chunks."""

    connect: float
    first_byte: float
    read: float
    pool: float


class ToolCall(msgspec.Struct, frozen=True, gc=False):
    """A tool call an assistant message made earlier in the conversation."""

    id: str
    name: str
    arguments: str


class Message(msgspec.Struct, frozen=True):
    """A conversation turn. `content` is text, or OpenAI-style content parts (`{"type": "text", ...}`)."""

    role: str
    content: str | tuple[Mapping[str, Any], ...] | None
    name: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        parts = self.content or ()
        return "".join(str(p.get("text", "")) for p in parts if p.get("type") == "text")


class ChatRequest(msgspec.Struct, frozen=True):
    """A chat request as providers see it: `model` is already the upstream's own model name.

    `tools` are OpenAI function-tool definitions; `extra` holds further OpenAI request fields that an
    OpenAI-compatible upstream receives unchanged (other providers use what they can translate).

    A Struct, not a dataclass: each upstream attempt copies it with the target's model (`msgspec.structs.replace`),
    and `dataclasses.replace` of a frozen dataclass was 2 % of a request's CPU.
    """

    model: str
    messages: tuple[Message, ...]
    request_id: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] | None = None
    tools: tuple[Mapping[str, Any], ...] = ()
    tool_choice: Any = None
    extra: Mapping[str, Any] = msgspec.field(default_factory=dict)
    timeouts: UpstreamTimeouts | None = None


# msgspec Structs, not dataclasses: a few are made per upstream event, and a frozen dataclass's __init__ (one
# object.__setattr__ per field) was a tenth of the relay's CPU.
class ToolCallDelta(msgspec.Struct, frozen=True):
    index: int
    id: str | None
    name: str | None
    arguments: str


class TokenUsage(msgspec.Struct, frozen=True):
    prompt_tokens: int
    completion_tokens: int


class Delta(msgspec.Struct, frozen=True):
    """One step of an answer. Several upstream tokens that arrived together may be merged into one delta."""

    text: str = ""
    reasoning: str = ""
    tool_calls: tuple[ToolCallDelta, ...] = ()
    finish_reason: str | None = None
    usage: TokenUsage | None = None
    # The upstream's own Chat Completions chunks (JSON, as sent) this delta came from, when it speaks that
    # dialect: the OpenAI-compatible API relays them unchanged, so fields tokenrelay does not model are not lost.
    raw: tuple[bytes, ...] = ()


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
