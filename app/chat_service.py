"""Turns a validated chat input into a `StreamRun` on the right provider."""

from __future__ import annotations

import math

from app.chat_input import ChatInput
from app.settings import Settings
from app.sse_transport import SSETransport
from app.streams import StreamRun
from providers.base import ChatRequest
from providers.registry import ProviderRegistry


class ChatService:
    def __init__(self, settings: Settings, providers: ProviderRegistry) -> None:
        self._settings = settings
        self._providers = providers
        self._sse = SSETransport(settings.stream.retry_ms)

    def open_sse(self, chat: ChatInput, request_id: str) -> StreamRun:
        route = self._providers.resolve(chat.model)
        messages = chat.conversation()
        request = ChatRequest(
            model=route.upstream_model,
            messages=messages,
            request_id=request_id,
            max_tokens=chat.max_tokens,
            temperature=chat.temperature,
            top_p=chat.top_p,
            stop=chat.stop_sequences(),
        )
        prompt_estimate = math.ceil(sum(len(m.content) for m in messages) / 4)
        return StreamRun(
            route=route,
            request=request,
            transport=self._sse,
            ping_interval=self._settings.stream.ping_interval_seconds,
            prompt_estimate=prompt_estimate,
        )
