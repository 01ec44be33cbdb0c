"""The httptools upstream client against real sockets: keep-alive, stale connections, body framings, bad HTTP."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import pytest

from app.errors import UpstreamError, UpstreamTimeout, UpstreamUnavailable
from app.redaction import Redactor
from app.settings.models import OpenAIProviderSettings
from bench.fake_upstream import FakeUpstream
from providers.base import ChatRequest, Message, UpstreamTimeouts
from providers.httptools_client import HttptoolsClient
from providers.openai import OpenAIProvider
from providers.upstream_errors import UpstreamErrors

pytestmark = pytest.mark.anyio

TIMEOUTS = UpstreamTimeouts(connect=2, first_byte=2, read=2, pool=2)
BODY = b'{"model":"gen?n=3","messages":[]}'

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        finally:
            writer.close()

    server = await asyncio.start_server(closing, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1/chat/completions"


async def body_of(client: HttptoolsClient, url: str) -> tuple[int, bytes]:
    async with client.post(url, headers={"X-Test": "1"}, body=BODY, timeouts=TIMEOUTS) as response:
        return response.status, b"".join([chunk async for chunk in response.chunks()])


@pytest.fixture
async def client() -> AsyncIterator[HttptoolsClient]:
    http = HttptoolsClient(max_connections=8)
    await http.open()
    yield http
    await http.aclose()


async def test_sequential_requests_share_one_kept_alive_connection(client: HttptoolsClient) -> None:
    upstream = FakeUpstream()
    await upstream.serve()
    url = f"{upstream.base_url}/chat/completions"
    for _ in range(5):
        status, body = await body_of(client, url)
        assert status == 200
        assert body.endswith(b"data: [DONE]\n\n")
        assert b" t2" in body
    assert len({r.headers.get("x-test") for r in upstream.records}) == 1
    assert len(upstream.records) == 5
    assert client.open_connections == 1  # one TCP connection carried all five
    await upstream.aclose()


async def test_a_connection_the_server_closed_while_idle_is_replaced(client: HttptoolsClient) -> None:
    served = 0

    async def one_request_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        await reader.readuntil(b"\r\n\r\n")
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # while the client believes it can keep the connection alive

    server, url = await serve(one_request_per_connection)
    assert await body_of(client, url) == (200, b"ok")
    await asyncio.sleep(0.05)  # let the server's FIN arrive, as it would between two real requests
    assert await body_of(client, url) == (200, b"ok")
    assert served == 2
    server.close()


async def test_body_that_ends_with_the_connection(client: HttptoolsClient) -> None:
    async def until_close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        writer.write(b"data: a\n\n")
        await writer.drain()
        writer.write(b"data: [DONE]\n\n")
        writer.close()

    server, url = await serve(until_close)
    assert await body_of(client, url) == (200, b"data: a\n\ndata: [DONE]\n\n")
    server.close()


async def test_invalid_http_is_an_upstream_error(client: HttptoolsClient) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    server, url = await serve(garbage)
    with pytest.raises(UpstreamError, match="invalid HTTP"):
        await body_of(client, url)
    server.close()


async def test_silence_before_headers_is_a_timeout(client: HttptoolsClient) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    server, url = await serve(silent)
    quick = UpstreamTimeouts(connect=1, first_byte=0.2, read=1, pool=1)
    with pytest.raises(UpstreamTimeout, match="response headers"):
        async with client.post(url, headers={}, body=BODY, timeouts=quick):
            pass
    server.close()


async def test_refused_connection_is_unavailable(client: HttptoolsClient) -> None:
    server, url = await serve(lambda r, w: asyncio.sleep(0))
    server.close()
    await server.wait_closed()
    with pytest.raises(UpstreamUnavailable):
        await body_of(client, url)


async def test_header_values_cannot_inject_lines(client: HttptoolsClient) -> None:
    with pytest.raises(ValueError, match="line break"):
        async with client.post(
            "http://127.0.0.1:9/x", headers={"X-Evil": "a\r\nHost: evil"}, body=b"", timeouts=TIMEOUTS
        ):
            pass


async def until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    """Wait for `condition`, checked as the event loop turns, for at most `seconds`: a FIN reaches the pool through
    the transport's `connection_lost`, which offers nothing else to await."""
    async with asyncio.timeout(seconds):
        while not condition():  # noqa: ASYNC110 - see above
            await asyncio.sleep(0.005)


async def test_a_connection_closed_while_idle_leaves_the_pool_at_once(client: HttptoolsClient) -> None:
    async def one_request_per_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
        await writer.drain()

    server, url = await serve(one_request_per_connection)
    for _ in range(20):
        assert await body_of(client, url) == (200, b"ok")
    await until(lambda: client.open_connections == 0)  # not 20 dead sockets waiting to be tried
    assert client.idle_connections == 0
    server.close()


async def test_idle_connections_expire_after_the_keep_alive_time() -> None:
    closed = asyncio.Event()
    open_now = 0

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal open_now
        open_now += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except asyncio.IncompleteReadError:
            open_now -= 1  # the client closed it
            if open_now == 0:
                closed.set()

    server, url = await serve(keep_alive)
    http = HttptoolsClient(max_connections=8, keepalive_expiry=1.0)
    await http.open()
    try:
        results = await asyncio.gather(*(body_of(http, url) for _ in range(4)))  # a burst: four connections
        assert results == [(200, b"ok")] * 4
        assert http.idle_connections == 4
        async with asyncio.timeout(5):
            await closed.wait()  # the upstream sees every idle connection closed by the client
        assert (http.idle_connections, http.open_connections) == (0, 0)
        assert await body_of(http, url) == (200, b"ok")  # and the next request opens a fresh one
    finally:
        await http.aclose()
        server.close()


async def test_a_connection_whose_last_response_filled_the_buffer_serves_the_next_one(
    client: HttptoolsClient,
) -> None:
    """Regression: a response over the pause threshold that had fully arrived left reading paused, and the next
    request on that kept-alive connection timed out waiting for headers (seen after a fast /v1 burst)."""
    big = b"x" * 300_000

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(big), big))
                await writer.drain()

    server, url = await serve(keep_alive)
    for _ in range(3):
        async with client.post(url, headers={}, body=BODY, timeouts=TIMEOUTS) as response:
            await asyncio.sleep(0.1)  # the whole body arrives, past the pause threshold, before it is read
            assert len(b"".join([chunk async for chunk in response.chunks()])) == len(big)
    assert client.open_connections == 1
    server.close()


async def test_a_reused_connection_keeps_its_own_shorter_read_timeout(client: HttptoolsClient) -> None:
    """Regression: the watchdog of a response with a 5 s read timeout was kept for the next one on the same
    connection, whose 0.2 s timeout then fired only after the 5 s."""
    requests = 0

    async def second_goes_silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while await reader.readuntil(b"\r\n\r\n"):
                requests += 1
                if requests == 1:
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                else:
                    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
                await writer.drain()

    server, url = await serve(second_goes_silent)
    patient = UpstreamTimeouts(connect=2, first_byte=2, read=5, pool=2)
    async with client.post(url, headers={}, body=BODY, timeouts=patient) as response:
        assert b"".join([c async for c in response.chunks()]) == b"ok"
    hasty = UpstreamTimeouts(connect=2, first_byte=2, read=0.2, pool=2)
    started = asyncio.get_running_loop().time()

    async def read_all() -> None:
        async with client.post(url, headers={}, body=BODY, timeouts=hasty) as response:
            async for _ in response.chunks():
                pass

    with pytest.raises(UpstreamTimeout):
        await read_all()
    assert asyncio.get_running_loop().time() - started < 2.0
    assert requests == 2, "the second request did not reuse the connection"
    server.close()


@dataclass
class Connections:
    """A test server's connections: opened, and closed again (each test waits for these to match before it
    ends, or a handler still reading would outlive its event loop)."""

    opened: int = 0
    closed: int = 0


async def all_closed(http: HttptoolsClient, connections: Connections, server: asyncio.Server) -> None:
    await http.aclose()
    await until(lambda: connections.closed == connections.opened)
    server.close()


def stream_ended_apart(
    release: asyncio.Event, connections: Connections, event: bytes = b"data: a\n\ndata: [DONE]\n\n"
) -> Handler:
    """Answers each request with `event` as its body's one chunk, and writes the terminating chunk only once
    `release` is set, as upstreams do a moment after `[DONE]`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.opened += 1
        try:
            await answer_each_request(reader, writer)
        finally:
            connections.closed += 1

    async def answer_each_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.startswith(b"Content-"))
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                await writer.drain()
                await release.wait()
                writer.write(b"0\r\n\r\n")
                await writer.drain()

    return handler


async def read_to_done(client: HttptoolsClient, url: str, *, end: bool = True) -> bytes:
    async with client.post(url, headers={}, body=BODY, timeouts=TIMEOUTS) as response:
        body = b""
        async for chunk in response.chunks():
            body += chunk
            if body.endswith(b"[DONE]\n\n"):
                if end:
                    response.end()
                break
        return body


async def test_a_stream_that_ended_before_its_terminating_chunk_keeps_its_connection(
    client: HttptoolsClient,
) -> None:
    release, connections = asyncio.Event(), Connections()
    server, url = await serve(stream_ended_apart(release, connections))
    assert await read_to_done(client, url) == b"data: a\n\ndata: [DONE]\n\n"
    assert client.idle_connections == 0  # not pooled yet: the body is not over
    release.set()
    await until(lambda: client.idle_connections == 1)
    assert await read_to_done(client, url) == b"data: a\n\ndata: [DONE]\n\n"
    assert connections.opened == 1  # the second request went on the first one's connection
    await all_closed(client, connections, server)


async def test_a_response_left_before_its_end_marker_still_closes_its_connection(client: HttptoolsClient) -> None:
    release, connections = asyncio.Event(), Connections()
    server, url = await serve(stream_ended_apart(release, connections))
    await read_to_done(client, url, end=False)  # as a relay whose client left
    assert client.open_connections == 0  # closed at once: that is how the upstream learns of it
    release.set()
    await read_to_done(client, url)
    assert connections.opened == 2
    await all_closed(client, connections, server)


async def test_a_terminating_chunk_that_never_comes_closes_the_connection() -> None:
    http = HttptoolsClient(max_connections=8, framing_seconds=0.05)
    await http.open()
    release, connections = asyncio.Event(), Connections()
    server, url = await serve(stream_ended_apart(release, connections))
    await read_to_done(http, url)
    assert http.open_connections == 1
    await until(lambda: http.open_connections == 0)
    assert http.idle_connections == 0
    release.set()
    await all_closed(http, connections, server)


_CHUNK = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":0,"model":"m",'
    b'"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
)


@pytest.mark.parametrize("done", [True, False], ids=["done", "cut-off-before-done"])
async def test_the_openai_provider_keeps_the_connection_of_a_stream_that_reached_done(
    client: HttptoolsClient, done: bool
) -> None:
    release, connections = asyncio.Event(), Connections()
    event = _CHUNK + (b"data: [DONE]\n\n" if done else b"")
    server, url = await serve(stream_ended_apart(release, connections, event))
    settings = OpenAIProviderSettings(type="openai", base_url=url.removesuffix("/chat/completions"))
    provider = OpenAIProvider(settings, client, UpstreamErrors(Redactor(())))
    request = ChatRequest(model="m", messages=(Message(role="user", content="hi"),), request_id="r")
    async with provider.stream(request) as deltas:
        received = [d async for d in deltas] if done else [await anext(deltas)]  # else: as a client that left
    assert received[0].text == "hi"
    if done:
        assert client.idle_connections == 0  # its terminating chunk has not come yet
        release.set()
        await until(lambda: client.idle_connections == 1)
    else:
        assert client.open_connections == 0  # closed at once: that is how the upstream learns of it
        release.set()
    assert connections.opened == 1
    await all_closed(client, connections, server)


async def test_a_connection_waiting_for_the_rest_of_its_body_still_counts_against_the_pool() -> None:
    http = HttptoolsClient(max_connections=1)
    await http.open()
    release, connections = asyncio.Event(), Connections()
    server, url = await serve(stream_ended_apart(release, connections))
    await read_to_done(http, url)
    second = asyncio.create_task(read_to_done(http, url))
    done, _ = await asyncio.wait({second}, timeout=0.2)
    assert not done  # no second connection beside the one still finishing: the pool holds one
    release.set()
    assert await second == b"data: a\n\ndata: [DONE]\n\n"
    assert connections.opened == 1  # and the second request had it once it was complete
    await all_closed(http, connections, server)
