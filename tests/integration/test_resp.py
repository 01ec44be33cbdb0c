"""The pipelined Redis connection of the hot path, against a real redis-server: every caller gets its own replies
on one shared connection, a dead connection is replaced once, a silent one times out without a second send."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from redis import asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.backends.resp import RespConnection, pack
from app.settings import ConfigError, parse_settings
from tests.support.redis_server import RedisServer
from tests.support.tcp_relay import SeveringRelay

pytestmark = pytest.mark.anyio


def test_commands_are_packed_as_arrays_of_bulk_strings() -> None:
    assert pack([("SET", "k", b"v\r\n", 12), ("GET", "é")]) == (
        b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$3\r\nv\r\n\r\n$2\r\n12\r\n*2\r\n$3\r\nGET\r\n$2\r\n\xc3\xa9\r\n"
    )


async def test_concurrent_callers_share_one_connection_and_each_gets_its_own_replies(
    redis_server: RedisServer,
) -> None:
    connection = RespConnection(redis_server.url, timeout=2)
    key = f"resp-{uuid.uuid4().hex}"
    try:

        async def one(i: int) -> list[object]:
            return await connection.execute([("SET", f"{key}:{i}", i), ("GET", f"{key}:{i}"), ("CLIENT", "ID")])

        answers = await asyncio.gather(*(one(i) for i in range(300)))
    finally:
        await connection.aclose()
    assert [a[:2] for a in answers] == [[b"OK", str(i).encode()] for i in range(300)]
    assert len({a[2] for a in answers}) == 1  # one connection carried all of them


async def test_error_replies_are_values_and_the_connection_goes_on(redis_server: RedisServer) -> None:
    connection = RespConnection(redis_server.url, timeout=2)
    try:
        missing, wrong, fine = await connection.execute(
            [("EVALSHA", "0" * 40, 0), ("INCR", "not a number", "extra"), ("PING",)]
        )
        assert isinstance(missing, NoScriptError)
        assert isinstance(wrong, ResponseError)
        assert not isinstance(wrong, NoScriptError)
        assert fine == b"PONG"
        assert await connection.execute([("ECHO", "still in order")]) == [b"still in order"]
    finally:
        await connection.aclose()


async def test_a_caller_that_leaves_does_not_shift_the_replies_of_the_next(redis_server: RedisServer) -> None:
    connection = RespConnection(redis_server.url, timeout=2)
    try:
        leaving = asyncio.ensure_future(connection.execute([("BLPOP", f"empty-{uuid.uuid4().hex}", "0.2")]))
        await asyncio.sleep(0)  # written to the connection
        leaving.cancel()
        assert await connection.execute([("ECHO", "mine")]) == [b"mine"]
    finally:
        await connection.aclose()


async def test_a_severed_connection_is_replaced_and_the_call_sent_once_more(redis_server: RedisServer) -> None:
    relay = await SeveringRelay(redis_server.port).start()
    connection = RespConnection(relay.url, timeout=2)
    key = f"resp-{uuid.uuid4().hex}"
    try:
        assert await connection.execute([("INCR", key)]) == [1]
        relay.sever()  # as a restart or a NAT does: nothing tells the client until it writes
        assert await connection.execute([("INCR", key)]) == [2]  # once, on a fresh connection
    finally:
        await connection.aclose()
        await relay.aclose()


async def test_a_redis_that_never_comes_back_is_a_connection_error(redis_server: RedisServer) -> None:
    relay = await SeveringRelay(redis_server.port).start()
    connection = RespConnection(relay.url, timeout=2)
    try:
        await connection.execute([("PING",)])
        relay.sever()
        await relay.aclose()  # nothing listens any more
        with pytest.raises(RedisConnectionError):
            await connection.execute([("PING",)])
    finally:
        await connection.aclose()


async def test_a_connection_in_use_longer_than_its_timeout_times_out_no_call_answered_in_time(
    redis_server: RedisServer,
) -> None:
    """One timer watches the oldest call: each call has its own deadline, not the first call's."""
    connection = RespConnection(redis_server.url, timeout=1.0)
    empty = f"empty-{uuid.uuid4().hex}"
    try:
        for _ in range(4):  # 1.2 s in all, each answered after 0.3 s (Redis times a block out within 0.1 s of it)
            assert await connection.execute([("BLPOP", empty, "0.3")]) == [None]
        # Sent together, answered one after the other: 0.25 and 0.5 s after they were sent.
        overlapping = [asyncio.ensure_future(connection.execute([("BLPOP", empty, "0.25")])) for _ in range(2)]
        assert await asyncio.gather(*overlapping) == [[None], [None]]
    finally:
        await connection.aclose()


async def test_the_deadline_timer_goes_on_after_firing_and_after_an_idle_spell(redis_server: RedisServer) -> None:
    connection = RespConnection(redis_server.url, timeout=0.5)
    empty = f"empty-{uuid.uuid4().hex}"
    try:
        for _ in range(3):  # the timer fires while the second waits, and watches it in turn
            assert await connection.execute([("BLPOP", empty, "0.3")]) == [None]
        await asyncio.sleep(0.6)  # the timer fires on an idle connection and stops
        assert await connection.execute([("PING",)]) == [b"PONG"]
        with pytest.raises(RedisTimeoutError):  # Redis would answer after 2 s: the 0.5 s deadline comes first
            await connection.execute([("BLPOP", empty, "2")])
    finally:
        await connection.aclose()


@pytest.fixture
async def silent_server() -> AsyncIterator[tuple[int, list[bytes]]]:
    """A server that accepts and reads, and never answers: a Redis stuck, or a network black hole."""
    received: list[bytes] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.append(data)
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1], received
    server.close()


async def test_a_silent_redis_times_out_every_waiting_caller_without_sending_again(
    silent_server: tuple[int, list[bytes]],
) -> None:
    port, received = silent_server
    connection = RespConnection(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    try:
        first = asyncio.ensure_future(connection.execute([("INCR", "a")]))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(connection.execute([("INCR", "b")]))
        outcomes = await asyncio.wait_for(asyncio.gather(first, second, return_exceptions=True), 2)
    finally:
        await connection.aclose()
    assert all(isinstance(o, RedisTimeoutError) for o in outcomes), outcomes
    assert b"".join(received).count(b"INCR") == 2  # each sent once: a time-out may have run, it is not repeated


async def test_password_and_database_from_the_url() -> None:
    server = RedisServer().start()
    try:
        admin = aioredis.Redis.from_url(server.url)
        await admin.config_set("requirepass", "s3cret")
        await admin.aclose()
        connection = RespConnection(f"redis://:s3cret@127.0.0.1:{server.port}/3", timeout=2)
        try:
            assert await connection.execute([("SET", "where", "db3")]) == [b"OK"]
        finally:
            await connection.aclose()
        check = aioredis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/3")
        assert await check.get("where") == b"db3"
        await check.aclose()
        refused = RespConnection(f"redis://:wrong@127.0.0.1:{server.port}/0", timeout=2)
        with pytest.raises(RedisConnectionError, match="setup"):
            await refused.execute([("PING",)])
        await refused.aclose()
    finally:
        server.stop()


async def test_a_closed_connection_does_not_come_back(redis_server: RedisServer) -> None:
    """A call in flight when the backend closes fails; it is not sent again on a connection nobody would close."""
    connection = RespConnection(redis_server.url, timeout=2)
    await connection.execute([("PING",)])
    waiting = asyncio.ensure_future(connection.execute([("BLPOP", f"empty-{uuid.uuid4().hex}", "0.5")]))
    await asyncio.sleep(0.05)
    await connection.aclose()
    with pytest.raises(RedisConnectionError):
        await waiting
    with pytest.raises(RedisConnectionError):
        await connection.execute([("PING",)])


async def test_closing_while_connecting_is_a_connection_error_for_the_waiters(
    silent_server: tuple[int, list[bytes]],
) -> None:
    port, _ = silent_server
    connection = RespConnection(f"redis://:pw@127.0.0.1:{port}/0", timeout=2)  # its AUTH is never answered
    waiting = asyncio.ensure_future(connection.execute([("PING",)]))
    await asyncio.sleep(0.05)
    await connection.aclose()
    with pytest.raises(RedisConnectionError):
        await waiting


def test_tls_options_it_cannot_honour_are_a_config_error_that_hides_the_password() -> None:
    """redis-py takes options this connection would silently ignore: they stop startup, naming the option."""
    url = "rediss://:hunter2@127.0.0.1:6380/0?ssl_include_verify_flags=VERIFY_X509_STRICT"
    with pytest.raises(ConfigError, match=r"config.yaml:2: state.redis_url: .*ssl_include_verify_flags") as raised:
        parse_settings(f"state:\n  redis_url: '{url}'\n", {})
    assert "hunter2" not in str(raised.value)
    with pytest.raises(ConfigError, match="ssl_cert_reqs"):
        parse_settings("state:\n  redis_url: 'rediss://127.0.0.1:6380/0?ssl_cert_reqs=maybe'\n", {})
    good = "rediss://127.0.0.1:6380/0?ssl_cert_reqs=none&ssl_check_hostname=false"
    assert parse_settings(f"state:\n  redis_url: '{good}'\n", {}).state.redis_url == good
