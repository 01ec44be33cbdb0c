"""Turns a validated chat input into a `StreamRun` on the right provider."""

from __future__ import annotations

import math

from app.chat_input import ChatInput
from app.settings import Settings
from app.sse_transport import SSEEncoder
from app.streams import StreamRun, new_stream_id
from providers.base import ChatRequest
from providers.registry import ProviderRegistry
from providers.retry import RetryPolicy


class ChatService:
    def __init__(self, settings: Settings, providers: ProviderRegistry) -> None:
        self._settings = settings
        self._providers = providers
        self._policy = RetryPolicy.from_settings(settings.routing)

    def open_sse(self, chat: ChatInput, request_id: str) -> StreamRun:
        route = self._providers.resolve(chat.model)
        messages = chat.conversation()
        request = ChatRequest(
            model=route.public_model,
            messages=messages,
            request_id=request_id,
            max_tokens=chat.max_tokens,
            temperature=chat.temperature,
            top_p=chat.top_p,
            stop=chat.stop_sequences(),
        )
        prompt_estimate = math.ceil(sum(len(m.text()) for m in messages) / 4)
        stream_id = new_stream_id()
        return StreamRun(
            stream_id=stream_id,
            route=route,
            request=request,
            encoder=SSEEncoder(stream_id, self._settings.stream.retry_ms),
            policy=self._policy,
            ping_interval=self._settings.stream.ping_interval_seconds,
            prompt_estimate=prompt_estimate,
        )
