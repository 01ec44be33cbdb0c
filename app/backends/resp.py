"""One Redis connection shared by every caller, commands pipelined on it and replies matched in order.

The backend's per-stream commands (admission, a stream's end, the heartbeat) go through here rather than through
redis-py's connection pool: measured with bench/, a redis-py round trip cost 0.4 to 0.6 ms of a request's time to
first token at c=1 (its pool, command and reply layers run cold between requests) against 0.2 ms for the same
bytes on a plain asyncio protocol, and a burst of 32 arrivals queued for pooled connections. Redis answers one
connection's commands in order, so one connection carries every caller at once: each call writes its commands
and waits for as many replies, in its place in the queue. redis-py stays for everything else (sessions, pub/sub,
the admin API's reads).

A call is written at once, so a lone admission waits for nothing but Redis; the calls made in the same loop turn
after it are written together at the turn's end, so 32 arrivals cost two writes, not 32.

Failures keep redis-py's meaning, so the backend handles both alike: a lost connection is `ConnectionError` (a
call whose connection is lost before its reply is sent once more on a fresh one, the way a restarted Redis or a
NAT that forgot the connection is met: the call most likely never reached Redis), a reply
that does not come within `timeout` is `TimeoutError` (never sent again: it may have run), and the connection is
then dropped, failing the calls still waiting on it with `TimeoutError` too, since a connection that swallowed
one reply cannot be trusted with the order of the next. Replies come in order, so only the oldest call's deadline
can pass first: one timer per connection watches it, not one per call.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import hiredis
from redis.asyncio.connection import SSLConnection, UnixDomainSocketConnection, parse_url
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.deadlines import CLOCK_STEP

# hiredis packs exactly these (a bool, None or a list is a TypeError, where redis-py would send its repr).
Command = tuple[str | bytes | int | float, ...]
_pack_command = cast(Callable[[Command], bytes], hiredis.pack_command)  # its stub takes a 1-tuple; any length goes


def pack(commands: Sequence[Command]) -> bytes:
    """Commands in RESP, as Redis reads them: arrays of bulk strings. hiredis packs in C: a heartbeat's 10,000
    commands took 17 ms in Python, 7 ms here, and an admission 3.8 µs, 1.6 µs here."""
    return b"".join([_pack_command(command) for command in commands])


def _reply(value: Any) -> Any:
    """A parsed reply with Redis's error replies as redis-py's exceptions (as values, not raised)."""
    if isinstance(value, hiredis.ReplyError):
        message = str(value)
        return NoScriptError(message) if message.startswith("NOSCRIPT") else ResponseError(message)
    if isinstance(value, list):
        return [_reply(v) for v in value]
    return value


class _Call:
    __slots__ = ("deadline", "expected", "future", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], expected: int, deadline: float) -> None:
        self.future = future
        self.expected = expected
        self.deadline = deadline
        self.replies: list[Any] = []


class _Protocol(asyncio.Protocol):
    def __init__(self, timeout: float) -> None:
        self._timeout = timeout
        self._reader = hiredis.Reader()
        self._calls: collections.deque[_Call] = collections.deque()
        self._transport: asyncio.Transport | None = None
        self._later: list[bytes] | None = None  # None: nothing written this turn yet
        self._watch: asyncio.TimerHandle | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # a stream connection (uvloop's is no subclass)

    def send(self, data: bytes, expected: int) -> asyncio.Future[list[Any]]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()
        future.add_done_callback(_retrieved)
        if self.lost is not None or self._transport is None:
            future.set_exception(RedisConnectionError(f"the connection to Redis was lost: {self.lost}"))
            return future
        call = _Call(future, expected, loop.time() + self._timeout)
        self._calls.append(call)
        if self._watch is None:
            self._watch = loop.call_at(call.deadline + CLOCK_STEP, self._check_deadline)
        if self._later is None:
            self._transport.write(data)
            self._later = []
            loop.call_soon(self._write_later)
        else:
            self._later.append(data)
        return future

    def _write_later(self) -> None:
        later, self._later = self._later, None
        if later and self.lost is None and self._transport is not None:
            self._transport.write(b"".join(later))

    def _check_deadline(self) -> None:
        self._watch = None
        if not self._calls or self.lost is not None:
            return
        loop = asyncio.get_running_loop()
        deadline = self._calls[0].deadline
        if deadline <= loop.time():
            self.abort(RedisTimeoutError(f"Redis did not answer within {self._timeout} s"))
        else:
            self._watch = loop.call_at(deadline + CLOCK_STEP, self._check_deadline)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                if not self._calls:
                    self.abort(RedisConnectionError("Redis sent a reply nobody asked for"))
                    return
                call = self._calls[0]
                call.replies.append(_reply(reply))
                if len(call.replies) == call.expected:
                    self._calls.popleft()
                    if not call.future.done():  # its caller may have left
                        call.future.set_result(call.replies)
        except hiredis.ProtocolError as exc:
            self.abort(RedisConnectionError(f"Redis sent what is not RESP: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(RedisConnectionError(f"the connection to Redis was lost: {exc or 'closed by Redis'}"))

    def abort(self, error: Exception) -> None:
        """Drop the connection; every call still waiting fails with `error`."""
        self._fail(error)
        if self._transport is not None:
            self._transport.abort()

    def _fail(self, error: Exception) -> None:
        if self.lost is None:
            self.lost = error
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        while self._calls:
            call = self._calls.popleft()
            if not call.future.done():
                call.future.set_exception(error)


class RespConnection:
    """`await execute(commands)`: the commands' replies, in order (error replies as exception values).

    Connects on first use and again after a loss; AUTH and SELECT from the URL go first on each new connection."""

    def __init__(self, url: str, *, timeout: float) -> None:
        if (problem := url_problem(url)) is not None:
            raise ValueError(problem)
        self._options: Mapping[str, Any] = parse_url(url)
        self._timeout = timeout
        self._protocol: _Protocol | None = None
        self._connecting: asyncio.Future[_Protocol] | None = None
        self._closed = False

    async def execute(self, commands: Sequence[Command]) -> list[Any]:
        if not commands:
            return []  # a call waiting for no reply would take the next caller's
        data, expected = pack(commands), len(commands)
        for attempt in range(2):
            try:
                protocol = self._protocol
                if protocol is None or protocol.lost is not None:
                    protocol = await self._connected()
                return await protocol.send(data, expected)
            except RedisConnectionError:
                if attempt or self._closed:
                    raise
                # Found dead (a restart, a forgotten NAT entry): once more, on a fresh connection.
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        self._closed = True
        if self._connecting is not None and not self._connecting.done():
            self._connecting.cancel()
        if self._protocol is not None:
            self._protocol.abort(RedisConnectionError("the connection to Redis is closed"))
            self._protocol = None

    async def _connected(self) -> _Protocol:
        if self._closed:
            raise RedisConnectionError("the connection to Redis is closed")
        protocol = self._protocol
        if protocol is not None and protocol.lost is None:
            return protocol
        if self._connecting is None or self._connecting.done():
            # Callers that arrive while a connection is made wait for that one, not for one each.
            self._connecting = asyncio.ensure_future(self._connect())
            self._connecting.add_done_callback(_retrieved)
        connecting = self._connecting
        try:
            return await asyncio.shield(connecting)
        except asyncio.CancelledError:
            if connecting.cancelled() and self._closed:  # closed while connecting, not this caller cancelled
                raise RedisConnectionError("the connection to Redis is closed") from None
            raise

    async def _connect(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        options = self._options
        protocol: _Protocol | None = None

        def protocol_factory() -> _Protocol:
            return _Protocol(self._timeout)

        try:
            async with asyncio.timeout(self._timeout):
                if options.get("connection_class") is UnixDomainSocketConnection:
                    _, protocol = await loop.create_unix_connection(protocol_factory, options["path"])
                else:
                    tls = _tls(options) if options.get("connection_class") is SSLConnection else None
                    _, protocol = await loop.create_connection(
                        protocol_factory, options.get("host", "localhost"), options.get("port", 6379), ssl=tls
                    )
                if setup := self._setup_commands():
                    _check_setup(await protocol.send(pack(setup), len(setup)))
        except BaseException as exc:
            if protocol is not None:
                protocol.abort(RedisConnectionError("the connection's setup failed"))
            if isinstance(exc, TimeoutError):
                raise RedisTimeoutError(f"no connection to Redis within {self._timeout} s") from None
            if isinstance(exc, OSError):
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from None
            raise
        if self._closed:
            protocol.abort(RedisConnectionError("the connection to Redis is closed"))
            raise RedisConnectionError("the connection to Redis is closed")
        self._protocol = protocol
        return protocol

    def _setup_commands(self) -> list[Command]:
        options = self._options
        setup: list[Command] = []
        if options.get("password") is not None:
            user = options.get("username")
            setup.append(("AUTH", user, options["password"]) if user else ("AUTH", options["password"]))
        if options.get("db"):
            setup.append(("SELECT", options["db"]))
        return setup


def url_problem(url: str) -> str | None:
    """What this connection cannot honour in a Redis URL (a TLS option it does not know, a bad value), or None;
    the settings check it, so that it stops startup as a config error. Never quotes the URL (its password)."""
    try:
        options = parse_url(url)
    except ValueError as exc:
        return f"not a Redis URL redis-py reads: {exc}"
    if unknown := sorted(k for k in options if k.startswith("ssl_") and k not in _TLS_OPTIONS):
        return f"unsupported TLS option(s) {', '.join(unknown)}"
    reqs = options.get("ssl_cert_reqs")
    if isinstance(reqs, str) and reqs.lower() not in _CERT_REQS:
        return "ssl_cert_reqs must be none, optional or required"
    return None


def _check_setup(replies: list[Any]) -> None:
    for reply in replies:
        if isinstance(reply, Exception):  # its text is Redis's own (WRONGPASS ...), never the password
            raise RedisConnectionError(f"Redis refused the connection's setup: {reply}")


def _retrieved(future: asyncio.Future[Any]) -> None:
    # Its waiters may all have left (cancelled): the outcome is still taken, so none is reported as lost.
    if not future.cancelled():
        future.exception()


_TLS_OPTIONS = frozenset(
    ("ssl_ca_certs", "ssl_ca_path", "ssl_ca_data", "ssl_certfile", "ssl_keyfile", "ssl_password", "ssl_cert_reqs",
     "ssl_check_hostname", "ssl_min_version")
)  # fmt: skip
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def _tls(options: Mapping[str, Any]) -> ssl.SSLContext:
    """The TLS context a `rediss://` URL asks for, with redis-py's query options and defaults (verify the
    certificate and the host name)."""
    context = ssl.create_default_context(
        cafile=options.get("ssl_ca_certs"), capath=options.get("ssl_ca_path"), cadata=options.get("ssl_ca_data")
    )
    if certfile := options.get("ssl_certfile"):
        context.load_cert_chain(certfile, options.get("ssl_keyfile"), password=options.get("ssl_password"))
    reqs = options.get("ssl_cert_reqs", "required")
    mode = _CERT_REQS[reqs.lower()] if isinstance(reqs, str) else ssl.VerifyMode(reqs)
    context.check_hostname = mode == ssl.CERT_REQUIRED and bool(options.get("ssl_check_hostname", True))
    context.verify_mode = mode
    if (version := options.get("ssl_min_version")) is not None:
        context.minimum_version = ssl.TLSVersion(version)
    return context
