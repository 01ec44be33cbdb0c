"""Turns a validated request into a `StreamRun` on the right route, with the right wire encoder."""

from __future__ import annotations

import math
import time
from typing import Any

import msgspec
from litestar.connection import ASGIConnection
from litestar.datastructures import Cookie

from app.chat_input import ChatInput
from app.dialects import Dialect
from app.errors import RateLimited
from app.frame_log import FrameLog
from app.incoming import Incoming
from app.json_body import read_body
from app.keepalive import Pings
from app.limits import Limiter
from app.openai_encoders import CompletionEncoder, OpenAIChunkEncoder
from app.openai_input import ChatCompletionInput
from app.registry import Api, StreamRegistry, owner_digest
from app.resumable import RemoteCheck, ResumableStream, StreamLogs
from app.sessions import SessionReader
from app.settings import Settings
from app.shutdown import ShutdownDrain
from app.sse_transport import SSEEncoder
from app.stream_encoder import StreamEncoder
from app.streams import StreamRun, new_stream_id
from app.watcher import StreamWatcher
from middleware.auth import Authenticator, Identity, check_model
from middleware.principal import principal_key
from providers.base import ChatRequest
from providers.registry import ProviderRegistry, Route
from providers.retry import RetryPolicy

# Tokens reserved for the answer when the request sets no max_tokens; settled to the real count at the end.
DEFAULT_COMPLETION_RESERVE = 1024


class Caller(msgspec.Struct, frozen=True):
    identity: Identity | None  # the API key, when one was presented or a session holds one
    principal: str  # what limits count against: the key, else the client address


class ChatService:
    def __init__(
        self,
        settings: Settings,
        *,
        providers: ProviderRegistry,
        limiter: Limiter,
        auth: Authenticator,
        sessions: SessionReader,
        drain: ShutdownDrain,
        registry: StreamRegistry,
        logs: StreamLogs,
        pings: Pings,
        remote_watchers: RemoteCheck | None = None,
    ) -> None:
        self._settings = settings
        self._pings = pings
        self._logs = logs
        self._remote_watchers = remote_watchers
        self._registry = registry
        self._drain = drain
        self._providers = providers
        self._limiter = limiter
        self._auth = auth
        self._sessions = sessions
        self._policy = RetryPolicy.from_settings(settings.routing)

    @property
    def resumable_by_default(self) -> bool:
        """Whether `GET /chat/stream` (EventSource, which reconnects by itself) makes resumable streams."""
        return self._settings.stream.resume.enabled

    async def caller(self, connection: Incoming) -> Caller:
        """Who is asking: authenticated (raises `Unauthorized` if a key is required and missing) and keyed."""
        session = await self._sessions.read(connection)
        headers = connection.headers
        client = connection.client
        peer = client.host if client else None
        identity = self._auth.identify(headers, session)
        principal = principal_key(
            api_key_id=identity.key_id if identity else None,
            peer=peer,
            headers=headers,
            trusted=self._settings.limits.trusted_proxies,
        )
        return Caller(identity, principal)

    async def end_session(self, connection: ASGIConnection[Any, Any, Any, Any]) -> Cookie:
        return await self._sessions.end(connection)

    async def read_body(self, request: Incoming) -> bytes:
        """The request body: 413 past `limits.max_body_bytes`, 408 if it does not arrive within
        `server.body_timeout_seconds`."""
        return await read_body(
            request,
            max_bytes=self._settings.limits.max_body_bytes,
            seconds=self._settings.server.body_timeout_seconds,
        )

    @property
    def session_seconds(self) -> int:
        return self._settings.sessions.max_age_seconds

    async def login(self, connection: ASGIConnection[Any, Any, Any, Any], offered: str | None) -> str | None:
        """The key id a new session may carry (None: anonymous, when auth is off); raises `Unauthorized`, or
        `RateLimited` past the address's logins per minute or when the session store is full."""
        peer = connection.client.host if connection.client else None
        address = principal_key(
            api_key_id=None, peer=peer, headers=connection.headers, trusted=self._settings.limits.trusted_proxies
        )
        await self._limiter.check_request(
            f"login:{address}", self._settings.sessions.logins_per_minute, "sessions.logins_per_minute"
        )
        identity = self._auth.identify({"x-api-key": offered} if offered else connection.headers, None)
        if not await self._sessions.has_room(connection):
            raise RateLimited("too many open sessions; try again later", retry_after=60)
        return identity.key_id if identity else None

    def models_for(self, caller: Caller) -> list[str]:
        allowed = caller.identity.models if caller.identity else None
        return [m for m in self._providers.public_models() if allowed is None or m in allowed]

    async def open_sse(self, chat: ChatInput, request_id: str, caller: Caller) -> StreamRun:
        """`/chat/stream` served to this request's client alone: tokenrelay's own SSE frames."""
        return await self._sse_run(chat, request_id, caller)

    async def open_resumable(
        self, chat: ChatInput, request_id: str, caller: Caller, *, detached: bool = False
    ) -> ResumableStream:
        """`/chat/stream` produced into a log, which this request's client and any later one watch; `detached`:
        it runs to its end whether or not anyone watches (`POST /chat/streams`)."""
        run = await self._sse_run(chat, request_id, caller)
        return self._produce(run, request_id, caller, Dialect.CHAT, detached=detached)

    def _produce(
        self, run: StreamRun, request_id: str, caller: Caller, dialect: Dialect, *, detached: bool = False
    ) -> ResumableStream:
        resume = self._settings.stream.resume
        log = FrameLog(
            run.stream_id,
            owner=owner_digest(caller.principal),
            request_id=request_id,
            max_bytes=resume.max_bytes,
            dialect=dialect,
            on_end=self._logs.ended,
        )
        stream = ResumableStream(
            run, log, grace=resume.grace_seconds, detached=detached, remote_watchers=self._remote_watchers
        )
        self._logs.add(stream)
        stream.start()
        return stream

    def watch_new(self, stream: ResumableStream) -> StreamWatcher:
        """The watcher of the request that created `stream`: answered with the producer's own head."""
        return StreamWatcher(stream, position=0, head=None, pings=self._pings)

    async def _sse_run(self, chat: ChatInput, request_id: str, caller: Caller) -> StreamRun:
        route = self._providers.resolve(chat.model)
        check_model(caller.identity, route.public_model)
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
        return await self._run(stream_id, route, request, encoder, caller=caller, api="chat", transport="sse")

    async def open_completion(
        self, chat: ChatCompletionInput, request_id: str, caller: Caller
    ) -> StreamRun | StreamWatcher:
        """`/v1/chat/completions`: OpenAI chunks when `stream` is true, one `chat.completion` otherwise. A
        resumable stream (`"resumable": true`) is produced into a log, and its chunks carry ids to resume from."""
        route = self._providers.resolve(chat.model)
        check_model(caller.identity, route.public_model)
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
            encoder = OpenAIChunkEncoder(
                stream_id, route.public_model, created, chat.include_usage, resumable=chat.resumable
            )
        else:
            encoder = CompletionEncoder(stream_id, created)
        transport = "openai-sse" if chat.stream else "openai-json"
        run = await self._run(
            stream_id, route, request, encoder, caller=caller, created=created, api="openai", transport=transport
        )
        if not chat.resumable:
            return run
        return self.watch_new(self._produce(run, request_id, caller, Dialect.OPENAI))

    async def _run(
        self,
        stream_id: str,
        route: Route,
        request: ChatRequest,
        encoder: StreamEncoder,
        *,
        caller: Caller,
        api: Api,
        transport: str,
        created: int | None = None,
    ) -> StreamRun:
        self._drain.refuse_if_draining()
        prompt_estimate = math.ceil(sum(len(m.text()) for m in request.messages) / 4)
        reserve = prompt_estimate + (request.max_tokens or DEFAULT_COMPLETION_RESERVE)
        overrides = caller.identity.limits if caller.identity else None
        admission = await self._limiter.admit(caller.principal, stream_id, reserve, overrides)
        return StreamRun(
            admission=admission,
            stream_id=stream_id,
            created=int(time.time()) if created is None else created,
            route=route,
            request=request,
            encoder=encoder,
            policy=self._policy,
            pings=self._pings,
            prompt_estimate=prompt_estimate,
            drain=self._drain,
            registry=self._registry,
            api=api,
            transport=transport,
        )
