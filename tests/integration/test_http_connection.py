"""The server's own connection state (`app/connection_state.py`) under what uses it: pipelined requests queue and
are answered in order, a client that stops reading holds the stream back and then gets all of it, and a body that
arrives in parts is waited for."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import anyio
import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from tests.support.servers import proxy_settings, raw_exchange, running_proxy
from tests.support.whatwg_sse import DispatchedEvent, WhatwgParser

pytestmark = pytest.mark.anyio


def _post(path: str, body: dict[str, object], request_id: str) -> bytes:
    data = json.dumps(body).encode()
    return (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(data)}\r\nx-request-id: {request_id}\r\n\r\n"
    ).encode() + data


def _responses(raw: bytes) -> list[tuple[bytes, bytes]]:
    """Split a connection's bytes into (head, body) pairs; bodies are chunked or sized."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        fields = dict(line.split(b": ", 1) for line in head.lower().split(b"\r\n")[1:])
        if fields.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line, 16)
                body, rest = body + rest[:size], rest[size + 2 :]
                if size == 0:
                    break
        else:
            size = int(fields[b"content-length"])
            body, rest = rest[:size], rest[size:]
        out.append((head, body))
        raw = rest
    return out


async def test_pipelined_requests_are_answered_in_order() -> None:
    """Three requests in one write: the later two wait in the pipeline while the stream before them runs."""
    with running_proxy(proxy_settings()) as base:
        port = urlsplit(base).port
        assert port is not None
        data = (
            _post("/v1/chat/completions", {"messages": [{"role": "user", "content": "one"}], "stream": True}, "p1")
            + _post("/chat/stream", {"prompt": "two"}, "p2")
            + b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-request-id: p3\r\nconnection: close\r\n\r\n"
        )  # fmt: skip
        raw = await anyio.to_thread.run_sync(raw_exchange, port, data)
    answers = _responses(raw)
    assert [head.split(b"\r\n")[0] for head, _ in answers] == [b"HTTP/1.1 200 OK"] * 3
    assert [_header(head, b"x-request-id") for head, _ in answers] == [b"p1", b"p2", b"p3"]
    assert answers[0][1].endswith(b"data: [DONE]\n\n")
    assert b"one" in answers[0][1]
    assert b"event: done" in answers[1][1]
    assert b"two" in answers[1][1]


def _header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b": ")
        if key.lower() == name:
            return value
    raise AssertionError(f"no {name!r} in {head!r}")


async def test_a_client_that_stops_reading_gets_the_whole_stream_when_it_reads_again(upstream: FakeUpstream) -> None:
    """The proxy's writes wait for the client's window (and its upstream reads wait for them), then go on."""
    model = "gen?n=40000&pad=1000"  # 40 MB: more than the socket buffers between the three hold
    with running_proxy(proxy_settings(upstream, model)) as base:
        async with (
            httpx.AsyncClient(timeout=10) as client,
            client.stream("POST", f"{base}/chat/stream", json={"model": model, "prompt": "hi"}) as response,
        ):
            chunks = response.aiter_raw()
            parser = WhatwgParser()
            events = list(parser.feed(await chunks.__anext__()))
            record = await anyio.to_thread.run_sync(upstream.wait_for_request, model)
            assert await anyio.to_thread.run_sync(record.backpressured.wait, 10), "the proxy never blocked"
            events += [event async for event in _rest(chunks, parser)]
    tokens = "".join(json.loads(e.data)["text"] for e in events if e.type == "token")
    assert tokens.count(" t") == 40000
    assert tokens.endswith(" t39999" + "x" * 1000)
    assert events[-1].type == "done"


async def _rest(chunks: AsyncIterator[bytes], parser: WhatwgParser) -> AsyncIterator[DispatchedEvent]:
    async for chunk in chunks:
        for event in parser.feed(chunk):
            yield event


async def test_a_body_that_arrives_in_parts_is_waited_for() -> None:
    body = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "slowly"}]}).encode()

    async def parts() -> AsyncIterator[bytes]:
        for start in range(0, len(body), 16):
            yield body[start : start + 16]
            await anyio.sleep(0.02)  # a slow client: each part its own packet, the server reading in between

    with running_proxy(proxy_settings()) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                f"{base}/v1/chat/completions", content=parts(), headers={"content-type": "application/json"}
            )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Echo: slowly"
