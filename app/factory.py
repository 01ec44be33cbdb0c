"""`create_app(settings)`: the one place where the application is assembled."""

from __future__ import annotations

import gc
from functools import partial

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.di import Provide
from litestar.middleware.session.server_side import ServerSideSessionConfig
from litestar.stores.base import Store
from litestar.stores.redis import RedisStore

from app.admin import AdminService
from app.backends.base import Backend
from app.backends.memory import MemoryBackend
from app.backends.redis import RedisBackend
from app.backends.redis_log import RedisLogStore
from app.chat_service import ChatService
from app.error_handlers import EXCEPTION_HANDLERS
from app.hot_routes import HotRoutes
from app.keepalive import Pings
from app.limits import Limiter
from app.log_flusher import LogFlusher
from app.logs import configure_logging
from app.redaction import Redactor
from app.registry import StreamRegistry, replica_name
from app.remote_watcher import SharedLogReader
from app.resumable import StreamLogs
from app.resume import ResumeService
from app.routes.admin import admin_get_stream, admin_list_streams, admin_replica, admin_stop_stream
from app.routes.auth import close_session, open_session
from app.routes.chat import chat_stream_get, chat_stream_post, open_chat_stream
from app.routes.health import healthz, readyz
from app.routes.openai import chat_completions, list_models, open_chat_completion
from app.routes.streams import create_stream, stop_own_stream, watch_stream
from app.session_store import BoundedMemoryStore
from app.sessions import SKIP_SESSION, SessionReader
from app.settings import AuthSettings, Settings, load_settings
from app.shutdown import ShutdownDrain
from middleware.access import AccessPolicyMiddleware
from middleware.auth import Authenticator
from middleware.cors import CorsHeaders
from middleware.edge import EdgeMiddleware
from middleware.security_headers import SecurityHeaders
from providers.registry import ProviderRegistry

# A young collection every 2,000 net allocations (700 by default), a full one at most every 1,000 middle ones (10).
GC_THRESHOLDS = (2000, 10, 1000)

EXPOSED_HEADERS = (
    "x-request-id",
    "x-tokenrelay-stream-id",
    "x-tokenrelay-provider",
    "x-tokenrelay-model",
    "retry-after",
    "x-ratelimit-limit",
    "x-ratelimit-remaining",
    "x-ratelimit-reset",
)


def create_app(settings: Settings) -> Litestar:
    """Build the application. Nothing here does I/O: upstream pools open at startup and close at shutdown."""
    providers = ProviderRegistry(settings)
    backend = _backend(settings)
    registry = StreamRegistry(replica_name())
    limiter = Limiter(settings.limits, backend, registry)
    sessions = ServerSideSessionConfig(
        key=settings.sessions.cookie_name,
        max_age=settings.sessions.max_age_seconds,
        secure=settings.sessions.secure,
        httponly=True,
        samesite="lax",
        # Litestar's middleware saves the session (a store write and a cookie) on every response; only the
        # login routes need that. The others read the session themselves, and only when a cookie came.
        exclude_opt_key=SKIP_SESSION,
    )
    session_reader = SessionReader(sessions, required=bool(settings.auth.keys))
    drain = ShutdownDrain(settings.server.drain_seconds)
    logs = StreamLogs(settings.stream.resume)
    log_store = _log_store(settings)
    resume = settings.stream.resume
    flusher = (
        LogFlusher(logs, log_store, resume.flush_interval_ms / 1000, renew_every=resume.retention_seconds / 4)
        if log_store
        else None
    )
    clients = Authenticator(settings.auth)
    admins = Authenticator(AuthSettings(keys=settings.auth.admin_keys))
    admin_service = AdminService(backend, registry, admins, clients, logs=logs, flusher=flusher)
    # Every response's keep-alive, on one loop timer (app/deadlines.py).
    pings = Pings(settings.stream.ping_interval_seconds)
    chat_service = ChatService(
        settings,
        pings=pings,
        providers=providers,
        limiter=limiter,
        auth=clients,
        sessions=session_reader,
        drain=drain,
        registry=registry,
        logs=logs,
        remote_watchers=log_store.watched if log_store else None,
    )
    shared = SharedLogReader(log_store, drain) if log_store else None
    resume_service = ResumeService(logs, pings, shared=shared)

    def provide_chat_service() -> ChatService:
        return chat_service

    def provide_drain() -> ShutdownDrain:
        return drain

    def provide_admin_service() -> AdminService:
        return admin_service

    def provide_resume_service() -> ResumeService:
        return resume_service

    admin_routes = (
        [admin_list_streams, admin_get_stream, admin_stop_stream, admin_replica] if settings.auth.admin_keys else []
    )

    cors = settings.security.cors
    cors_config = (
        CORSConfig(
            allow_origins=list(cors.allow_origins),
            allow_methods=list(cors.allow_methods),  # type: ignore[arg-type]
            allow_headers=list(cors.allow_headers),
            allow_credentials=cors.allow_credentials,
            # Browser code may read what it needs to correlate and to back off.
            expose_headers=list(EXPOSED_HEADERS),
            max_age=cors.max_age_seconds,
        )
        if cors.allow_origins
        else None
    )
    app = Litestar(
        cors_config=cors_config,
        route_handlers=[
            chat_stream_get,
            chat_stream_post,
            create_stream,
            watch_stream,
            stop_own_stream,
            chat_completions,
            list_models,
            open_session,
            close_session,
            healthz,
            readyz,
            *admin_routes,
        ],
        middleware=[sessions.middleware],
        stores={"sessions": _session_store(settings, backend)},
        dependencies={
            "chat_service": Provide(provide_chat_service, sync_to_thread=False, use_cache=True),
            "drain": Provide(provide_drain, sync_to_thread=False, use_cache=True),
            "admin_service": Provide(provide_admin_service, sync_to_thread=False, use_cache=True),
            "resume_service": Provide(provide_resume_service, sync_to_thread=False, use_cache=True),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        request_max_body_size=settings.limits.max_body_bytes,
        on_startup=[providers.open, limiter.open, *([flusher.open] if flusher else []), drain.install_signal_handlers],
        # Producers still running end first, then the flusher writes their terminal frames to Redis.
        on_shutdown=[logs.close, *([flusher.aclose] if flusher else []), providers.aclose, limiter.aclose],
        openapi_config=None,
        logging_config=None,
    )
    # The stream routes every token goes through, served before Litestar routes anything (app/hot_routes.py).
    hot_routes = HotRoutes(
        app.asgi_handler,
        {
            "/v1/chat/completions": partial(open_chat_completion, chat_service),
            "/chat/stream": partial(open_chat_stream, chat_service),
        },
        CorsHeaders(cors_config) if cors_config else None,
    )
    # Litestar runs its middleware only on matched routes; wrapping the handler covers 404 and 405 too.
    access = AccessPolicyMiddleware(
        hot_routes,
        loopback_only=not settings.auth.keys and not settings.auth.open,
        allowed_origins=settings.security.cors.allow_origins,
        trusted_proxies=settings.limits.trusted_proxies,
    )
    app.asgi_handler = EdgeMiddleware(access, SecurityHeaders.from_settings(settings.security.headers))
    return app


def _backend(settings: Settings) -> Backend:
    state = settings.state
    if state.redis_url:
        return RedisBackend(
            state.redis_url,
            key_prefix=state.key_prefix,
            timeout=state.redis_timeout_seconds,
            cancel_messages=state.cancel_messages,
        )
    return MemoryBackend()


def _log_store(settings: Settings) -> RedisLogStore | None:
    state = settings.state
    if not state.redis_url or not settings.stream.resume.enabled:
        return None
    return RedisLogStore(
        state.redis_url,
        key_prefix=state.key_prefix,
        timeout=state.redis_timeout_seconds,
        retention_seconds=settings.stream.resume.retention_seconds,
        live_seconds=settings.limits.lease_ttl_seconds,
    )


def _session_store(settings: Settings, backend: Backend) -> Store:
    if isinstance(backend, RedisBackend):
        # The limits' pool, with its retry on dead connections; the backend closes it.
        namespace = f"{settings.state.key_prefix}sessions"
        return RedisStore(backend.client, namespace=namespace, handle_client_shutdown=False)
    return BoundedMemoryStore(settings.sessions.max_sessions)


def create_app_from_environment() -> Litestar:
    """The factory uvicorn calls in each worker process (`TOKENRELAY_CONFIG` names the file)."""
    settings = load_settings()
    configure_logging(Redactor.from_settings(settings))  # a worker process starts with no logging configured
    return create_server_app(settings)


def create_server_app(settings: Settings) -> Litestar:
    """`create_app` for a server process, with the garbage collector set for a server that holds thousands of
    streams open.

    Everything alive once the app is built lives as long as the process, so it is moved out of the collector's
    reach (`gc.freeze`; bench/: a 13 ms full pause without it). A finished request leaves no reference cycle
    (tests/integration/test_no_cycles.py), so the collector finds little to free, while each full pass walks
    every open stream's objects: with the default thresholds, 5,000 open streams took 10 full passes (2 s in
    all, the longest 0.41 s) and a TTFT p99 of 3.6 s; with these, one pass (48 ms) and about 1 s."""
    app = create_app(settings)
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    return app
