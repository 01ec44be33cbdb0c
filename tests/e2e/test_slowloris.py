"""A slowloris (many connections that never finish their headers) against a process limited to 1,024 file
descriptors: a real client is served while it lasts (the connection budget sheds the oldest idle connection), and
every half-sent connection is closed by the server (the header deadline)."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from pathlib import Path

import anyio
import httpx
import pytest

from tests.support.processes import served

pytestmark = pytest.mark.anyio

ATTACKERS = 1100  # more than the server can hold open at once


def _limit_descriptors() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))


async def _half_request(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect and send half a request's headers."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /chat/stream?prompt=hi HTTP/1.1\r\nhost: x\r\nx-slow: ")
    await writer.drain()
    return reader, writer


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    with contextlib.suppress(ConnectionError):
        while await reader.read(4096):
            pass
    return True


async def test_a_slowloris_does_not_starve_real_clients(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < ATTACKERS + 200:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    config = tmp_path / "config.yaml"
    config.write_text(
        "server: {header_timeout_seconds: 3}\n"
        "providers:\n  echo: {type: echo, tokens_per_second: 0, first_token_delay_ms: 0}\n"
        "limits: {requests_per_minute: 0, concurrent_streams: 0}\n"
    )
    with served(config, preexec_fn=_limit_descriptors) as proxy:
        with anyio.fail_after(15):
            attackers = await asyncio.gather(*(_half_request(proxy.port) for _ in range(ATTACKERS)))
        try:
            async with httpx.AsyncClient(timeout=15) as client:
                response = await client.get(f"{proxy.base}/chat/stream", params={"prompt": "real"})
            with anyio.fail_after(15):
                closed = await asyncio.gather(*(_closed_by_server(reader) for reader, _ in attackers))
        finally:
            for _, writer in attackers:
                writer.transport.abort()
        log = proxy.log()
    assert response.status_code == 200
    assert b"event: done" in response.content
    assert all(closed), "the server closed every half-sent connection itself"
    assert "Traceback" not in log
