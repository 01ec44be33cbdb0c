"""The built-in local provider: streams a reply derived from the prompt, with no keys and no network.

The reply is `Echo: <last user message>`, cut into word-sized tokens (at most six code points each, a word's
leading white space kept on it, as LLM tokenizers do), paced by `tokens_per_second` after `first_token_delay_ms`.
It is deterministic, so tests and demos can predict every byte.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager

import anyio

from app.settings import EchoProviderSettings
from providers.base import ChatRequest, Delta, Message, TokenUsage

_TOKEN = re.compile(r"\s*\S{1,6}|\s+")


def tokenize(text: str) -> list[str]:
    """Split text into tokens that concatenate back to exactly `text`."""
    return _TOKEN.findall(text)


def reply_for(messages: tuple[Message, ...]) -> str:
    prompt = next((m.text() for m in reversed(messages) if m.role == "user"), messages[-1].text())
    return f"Echo: {prompt}"


class EchoProvider:
    def __init__(self, settings: EchoProviderSettings) -> None:
        self._settings = settings

    @asynccontextmanager
    async def stream(self, request: ChatRequest) -> AsyncIterator[AsyncGenerator[Delta, None]]:
        yield self._deltas(request)

    async def _deltas(self, request: ChatRequest) -> AsyncGenerator[Delta, None]:
        reply, finish_reason = _apply_stop(reply_for(request.messages), request.stop)
        tokens = tokenize(reply)
        if request.max_tokens is not None and len(tokens) > request.max_tokens:
            tokens, finish_reason = tokens[: request.max_tokens], "length"
        start = anyio.current_time() + self._settings.first_token_delay_ms / 1000
        rate = self._settings.tokens_per_second
        for i, token in enumerate(tokens):
            due = start + (i / rate if rate else 0.0)
            delay = due - anyio.current_time()
            if delay > 0:
                await anyio.sleep(delay)
            yield Delta(text=token)
        prompt_tokens = sum(len(tokenize(m.text())) for m in request.messages)
        usage = TokenUsage(prompt_tokens=prompt_tokens, completion_tokens=len(tokens))
        yield Delta(finish_reason=finish_reason, usage=usage)

    async def open(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def _apply_stop(reply: str, stop: tuple[str, ...] | None) -> tuple[str, str]:
    cut = min((i for s in stop or () if (i := reply.find(s)) >= 0), default=-1)
    return (reply[:cut], "stop") if cut >= 0 else (reply, "stop")
