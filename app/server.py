"""Running the app under uvicorn (uvloop + httptools) with the time limits a hostile network needs.

uvicorn closes an idle keep-alive connection after `timeout_keep_alive`, but it has no limit for a connection that
never sends a request, nor for one that sends its headers a byte at a time: each holds a file descriptor for ever,
and a few hundred of them starve real clients (a slowloris). `GuardedHttpToolsProtocol` gives every request
`server.header_timeout_seconds` from its first byte (or from the connection's opening) to complete its headers,
then answers 408 and closes. Bodies are bounded in the app (`server.body_timeout_seconds`, a 408 JSON).

A deadline alone still lets an attacker hold every descriptor for that long, and once the process runs out, the
event loop resets each new connection. So the server also keeps a budget of connections (three quarters of its
file-descriptor limit; streams need a second descriptor upstream): past it, each new connection closes the oldest
one that is between requests (idle, or still sending its headers). A real client sends its request at once and is
never the oldest such connection for long.
"""

from __future__ import annotations

import asyncio
import resource
import sys
from typing import Any

import uvicorn
from uvicorn._types import ASGI3Application
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.supervisors import Multiprocess

from app.connection_state import FlowControl, Pipeline
from app.disconnect import NOTIFY_DISCONNECT, ConnectionLoss
from app.factory import create_server_app
from app.response_head import FastHeadCycle
from app.settings import Settings

_TIMED_OUT = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\ncontent-length: 95\r\n\r\n"
    b'{"error":{"message":"the request headers did not arrive in time","type":"invalid_request_error"}}'
)


# With no hard limit, Linux still caps a process at fs.nr_open (1,048,576 by default).
_FILE_LIMIT_WITHOUT_HARD = 1 << 20


class ServerConfig(uvicorn.Config):
    """uvicorn's configuration plus tokenrelay's own limits (it is pickled into each worker process)."""

    def __init__(self, app: Any, *, header_timeout: float, connection_budget: int, **options: Any) -> None:
        super().__init__(app, **options)
        self.header_timeout = header_timeout
        self.connection_budget = connection_budget
        # This process's connections that are between requests, oldest first (a dict is an ordered set).
        self.between_requests: dict[GuardedHttpToolsProtocol, None] = {}


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a deadline for each request's headers and a connection budget, the
    connection's loss told to the app through a callback (`app/disconnect.py`), and lighter state for each
    connection (`app/connection_state.py`)."""

    # CPython 3.11 keeps an instance's attributes in its class's shared key table only while that table, 29
    # keys at most, holds them all; uvicorn's protocol has 28, so ours are slots. As two more keys they gave every
    # connection a dict of its own: 1.5 KiB a connection (measured with 1,000 open streams).
    __slots__ = ("_header_deadline", "_in_headers", "_loss")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loss: ConnectionLoss | None = None
        self._header_deadline: asyncio.TimerHandle | None = None
        self._in_headers = False
        self.url = b""  # uvicorn's, first set per request: its key must be in the table from the first instance
        self.pipeline = Pipeline()  # type: ignore[assignment]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = FlowControl(transport)  # type: ignore[assignment]
        self._loss = ConnectionLoss(self.loop)
        self._arm()
        self._idle(True)
        budget = getattr(self.config, "connection_budget", 0)
        if budget and len(self.connections) > budget:
            self._shed_oldest_idle()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        # Armed once a read ends with a request's headers still incomplete, which is as they began: a request
        # that comes whole in one read, as nearly all do, arms and cancels no timer (5k instructions).
        if self._in_headers and self._header_deadline is None:
            self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        self._idle(False)
        super().on_headers_complete()
        self.scope[NOTIFY_DISCONNECT] = self._loss  # type: ignore[literal-required]

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: ASGI3Application) -> None:
        # uvicorn's cycle made over as ours before its task exists (a request, or one that waited pipelined).
        own = FastHeadCycle.adopt(cycle)
        if self.cycle is cycle:
            self.cycle = own
        super()._start_asgi_task(own, app)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # Not idle if uvicorn has just started a request that came pipelined behind this one.
        if not self.transport.is_closing() and self.cycle.response_complete:
            self._idle(True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._idle(False)
        super().connection_lost(exc)
        if self._loss is not None:
            self._loss.lost()

    def _idle(self, idle: bool) -> None:
        waiting: dict[GuardedHttpToolsProtocol, None] | None = getattr(self.config, "between_requests", None)
        if waiting is None:
            return
        if idle:
            waiting[self] = None
        else:
            waiting.pop(self, None)

    def _shed_oldest_idle(self) -> None:
        waiting: dict[GuardedHttpToolsProtocol, None] = self.config.between_requests  # type: ignore[attr-defined]
        for oldest in waiting:
            if oldest is not self:
                waiting.pop(oldest)
                oldest.transport.abort()
                return

    def _arm(self) -> None:
        timeout = getattr(self.config, "header_timeout", None)
        if timeout:
            self._header_deadline = self.loop.call_later(timeout, self._headers_timed_out)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _headers_timed_out(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            self.transport.write(_TIMED_OUT)
            self.transport.close()


def server_config(app: Any, settings: Settings, **overrides: Any) -> ServerConfig:
    server = settings.server
    options: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "loop": "uvloop",
        "http": GuardedHttpToolsProtocol,
        "log_config": None,
        # The edge (middleware/edge.py) writes each request's access line once its response is over; uvicorn's
        # own would be written as the response starts, which for a stream is its first token.
        "access_log": False,
        "backlog": server.backlog,
        "timeout_keep_alive": server.keepalive_seconds,
        # tokenrelay's own drain (app/shutdown.py) has ended every stream before uvicorn hears the signal: what
        # uvicorn still waits for is at most a short non-stream request.
        "timeout_graceful_shutdown": 1,
        # X-Forwarded-For is judged by limits.trusted_proxies alone; uvicorn would otherwise trust 127.0.0.1.
        "proxy_headers": False,
        # `server: uvicorn` tells a scanner what to try, and is one more header on every stream's first write.
        "server_header": False,
    }
    return ServerConfig(
        app,
        header_timeout=server.header_timeout_seconds,
        connection_budget=connection_budget(),
        **(options | overrides),
    )


def connection_budget() -> int:
    """Client connections this process keeps open at most (see the module's docstring)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(16, soft * 3 // 4 - 32)


def raise_file_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit, as Go's runtime does at every start: each
    open stream holds two descriptors, and the usual soft limit of 1,024 would cap a replica at a few hundred
    streams whatever its memory. Worker processes inherit it. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, _FILE_LIMIT_WITHOUT_HARD)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        except (ValueError, OSError):
            return soft
        return wanted
    return soft


def serve(settings: Settings) -> None:
    """Run the server in this process (one worker) or in `server.workers` worker processes, until stopped."""
    raise_file_limit()
    if settings.server.workers > 1:
        # Each worker builds its own app from the same configuration file (a factory, by import path).
        config = server_config(
            "app.factory:create_app_from_environment", settings, factory=True, workers=settings.server.workers
        )
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    server = uvicorn.Server(server_config(create_server_app(settings), settings))
    server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's own exit status for a failed startup
