"""`/v1` pass-through, byte for byte: however the upstream's events are cut into reads, and however many arrive in
one read (and are merged into one delta), the client gets the upstream's events exactly, in order."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from tests.support.servers import proxy_settings, running_proxy

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "hi"}]
TEXT = (Path(__file__).resolve().parents[1] / "fixtures" / "openai" / "text.sse").read_bytes()


async def v1_body(base: str, model: str) -> bytes:
    body = {"model": model, "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{base}/v1/chat/completions", json=body)
    assert response.status_code == 200
    return response.content


async def test_many_events_per_read_pass_through_byte_for_byte(upstream: FakeUpstream) -> None:
    """64 tokens written 16 events at a time: merged per read inside, every chunk unchanged outside."""
    model = "gen?n=64"
    async with httpx.AsyncClient(timeout=10) as client:
        body = {"model": model, "messages": USER, "stream": True, "stream_options": {"include_usage": True}}
        direct = (await client.post(f"{upstream.base_url}/chat/completions", json=body)).content
    with running_proxy(proxy_settings(upstream, model)) as base:
        relayed = await v1_body(base, model)
    assert relayed == direct
    assert relayed.count(b"data: ") == 64 + 4  # role, 64 tokens, finish, usage, [DONE]


@pytest.fixture
def trickling_upstream() -> Iterator[str]:
    """An upstream that sends the text transcript 5 bytes per write: events, lines and UTF-8 characters are all
    cut across reads."""
    ready = threading.Event()
    address: list[str] = []
    stop: list[asyncio.AbstractEventLoop] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n")
        for i in range(0, len(TEXT), 5):
            writer.write(TEXT[i : i + 5])
            await writer.drain()
            await asyncio.sleep(0)
        writer.close()

    def run() -> None:
        loop = asyncio.new_event_loop()
        stop.append(loop)
        server = loop.run_until_complete(asyncio.start_server(serve, "127.0.0.1", 0))
        address.append(f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1")
        ready.set()
        loop.run_forever()
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(5)
    yield address[0]
    stop[0].call_soon_threadsafe(stop[0].stop)
    thread.join(5)


async def test_events_cut_across_reads_pass_through_byte_for_byte(trickling_upstream: str) -> None:
    with running_proxy(proxy_settings(None, "any", base_url=trickling_upstream)) as base:
        relayed = await v1_body(base, "any")
    assert relayed == TEXT
