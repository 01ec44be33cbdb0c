"""Turns a validated request into a `StreamRun` on the right route, with the right wire encoder."""

from __future__ import annotations

import math
import time
from collections.abc import Mapping

from app.chat_input import ChatInput
from app.limits import Limiter
from app.openai_encoders import CompletionEncoder, OpenAIChunkEncoder
from app.openai_input import ChatCompletionInput
from app.settings import Settings
from app.sse_transport import SSEEncoder
from app.streams import StreamEncoder, StreamRun, new_stream_id
from middleware.principal import principal_key
from providers.base import ChatRequest
from providers.registry import ProviderRegistry, Route
from providers.retry import RetryPolicy

# Tokens reserved for the answer when the request sets no max_tokens; settled to the real count at the end.
DEFAULT_COMPLETION_RESERVE = 1024


class ChatService:
    def __init__(self, settings: Settings, providers: ProviderRegistry, limiter: Limiter) -> None:
        self._settings = settings
        self._providers = providers
        self._limiter = limiter
        self._policy = RetryPolicy.from_settings(settings.routing)

    def principal(self, peer: str | None, headers: Mapping[str, str]) -> str:
        trusted = self._settings.limits.trusted_proxies
        return principal_key(api_key_id=None, session_id=None, peer=peer, headers=headers, trusted=trusted)

    def public_models(self) -> list[str]:
        return self._providers.public_models()

    async def open_sse(self, chat: ChatInput, request_id: str, principal: str) -> StreamRun:
        """`/chat/stream`: tokenrelay's own SSE frames."""
        route = self._providers.resolve(chat.model)
        request = ChatRequest(
            model=route.public_model,
            messages=chat.conversation(),
            request_id=request_id,
            max_tokens=chat.max_tokens,
            temperature=chat.temperature,
            top_p=chat.top_p,
            stop=chat.stop_sequences(),
        )
        stream_id = new_stream_id()
        encoder = SSEEncoder(stream_id, self._settings.stream.retry_ms)
        return await self._run(stream_id, route, request, encoder, principal=principal)

    async def open_completion(self, chat: ChatCompletionInput, request_id: str, principal: str) -> StreamRun:
        """`/v1/chat/completions`: OpenAI chunks when `stream` is true, one `chat.completion` otherwise."""
        route = self._providers.resolve(chat.model)
        request = ChatRequest(
            model=route.public_model,
            messages=chat.conversation(),
            request_id=request_id,
            max_tokens=chat.max_completion_tokens or chat.max_tokens,
            temperature=chat.temperature,
            top_p=chat.top_p,
            stop=chat.stop_sequences(),
            tools=tuple(chat.tools or ()),
            tool_choice=chat.tool_choice,
            extra=chat.passthrough(),
        )
        stream_id, created = new_stream_id(), int(time.time())
        encoder: StreamEncoder
        if chat.stream:
            encoder = OpenAIChunkEncoder(stream_id, route.public_model, created, chat.include_usage)
        else:
            encoder = CompletionEncoder(stream_id, created)
        return await self._run(stream_id, route, request, encoder, principal=principal, created=created)

    async def _run(
        self,
        stream_id: str,
        route: Route,
        request: ChatRequest,
        encoder: StreamEncoder,
        *,
        principal: str,
        created: int | None = None,
    ) -> StreamRun:
        prompt_estimate = math.ceil(sum(len(m.text()) for m in request.messages) / 4)
        reserve = prompt_estimate + (request.max_tokens or DEFAULT_COMPLETION_RESERVE)
        admission = await self._limiter.admit(principal, stream_id, reserve)
        return StreamRun(
            admission=admission,
            stream_id=stream_id,
            created=int(time.time()) if created is None else created,
            route=route,
            request=request,
            encoder=encoder,
            policy=self._policy,
            ping_interval=self._settings.stream.ping_interval_seconds,
            prompt_estimate=prompt_estimate,
        )
