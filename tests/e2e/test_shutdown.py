"""SIGTERM with streams open: a drain that tokenrelay owns, never a silent cut (real processes, real sockets)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from pathlib import Path

import anyio
import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from tests.support.processes import ServedProcess, served
from tests.support.redis_server import RedisServer
from tests.support.whatwg_sse import parse

pytestmark = pytest.mark.anyio

DRAIN_SECONDS = 2.0


def write_config(tmp_path: Path, upstream: FakeUpstream, *, drain: float = DRAIN_SECONDS, extra: str = "") -> Path:
    path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(
        f"server: {{drain_seconds: {drain}}}\n"
        "providers:\n"
        f"  fake: {{type: openai, base_url: '{upstream.base_url}', api_key: sk-test-key}}\n"
        "models:\n"
        "  stall: {provider: fake, model: 'stall?n=2'}\n"
        "  short: {provider: fake, model: 'gen?n=10&gap_ms=50'}\n"
        "limits: {requests_per_minute: 0, concurrent_streams: 0}\n" + extra
    )
    return path


async def open_stream(client: httpx.AsyncClient, base: str, api: str, model: str, opened: anyio.Event) -> bytes:
    """Read a stream to its end; `opened` is set once its first token has arrived."""
    if api == "chat":
        request = client.build_request("POST", f"{base}/chat/stream", json={"model": model, "prompt": "hi"})
    else:
        payload = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
        request = client.build_request("POST", f"{base}/v1/chat/completions", json=payload)
    response = await client.send(request, stream=True)
    assert response.status_code == 200, await response.aread()
    body = b""
    async for chunk in response.aiter_raw():
        body += chunk
        if b" t0" in body:
            opened.set()
    await response.aclose()
    return body


async def wait_until_draining(proxy: ServedProcess) -> None:
    await anyio.to_thread.run_sync(
        lambda: proxy.wait_for_lines(lambda lines: any("shutdown: draining" in x for x in lines), 5)
    )


def assert_chat_stream_cancelled(body: bytes) -> None:
    events = parse(body).events
    assert events[-1].type == "cancel", body[-300:]
    assert json.loads(events[-1].data) == {"reason": "server_shutdown", "retryable": True}
    assert [e.type for e in events].count("cancel") == 1
    last_block = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    retry = [line for line in last_block.split(b"\n") if line.startswith(b"retry:")]
    assert retry, last_block  # EventSource is told to come back soon (to another replica)
    assert 500 <= int(retry[0].split(b":")[1]) <= 2500


def assert_openai_stream_ended_with_shutdown_error(body: bytes) -> None:
    lines = [line for line in body.split(b"\n") if line.startswith(b"data: ")]
    last = json.loads(lines[-1][6:])
    assert last["error"]["code"] == "server_shutdown", last
    assert b"[DONE]" not in body


async def test_sigterm_ends_every_open_stream_with_its_terminal_frame(tmp_path: Path, upstream: FakeUpstream) -> None:
    config = write_config(tmp_path, upstream)
    with served(config) as proxy:
        async with httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=64)) as client:
            opened = [anyio.Event() for _ in range(20)]
            short_opened = anyio.Event()
            streams = [
                asyncio.ensure_future(open_stream(client, proxy.base, "chat" if i < 10 else "v1", "stall", event))
                for i, event in enumerate(opened)
            ]
            with anyio.fail_after(10):
                for event in opened:
                    await event.wait()
            before = len(upstream.records_for("stall?n=2"))
            short = asyncio.ensure_future(open_stream(client, proxy.base, "chat", "short", short_opened))
            with anyio.fail_after(5):
                await short_opened.wait()

            sent = proxy.signal(signal.SIGTERM)
            await wait_until_draining(proxy)
            assert (await client.get(f"{proxy.base}/readyz")).status_code == 503  # load balancers: go elsewhere
            assert (await client.get(f"{proxy.base}/healthz")).status_code == 200  # but the process is alive
            refused = await client.post(f"{proxy.base}/chat/stream", json={"model": "stall", "prompt": "late"})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "server_shutdown"
            assert int(refused.headers["retry-after"]) >= 1
            refused_v1 = await client.post(
                f"{proxy.base}/v1/chat/completions",
                json={"model": "stall", "messages": [{"role": "user", "content": "late"}]},
            )
            assert refused_v1.status_code == 503
            assert refused_v1.json()["error"]["code"] == "server_shutdown"

            with anyio.fail_after(DRAIN_SECONDS + 5):
                bodies = await asyncio.gather(*streams)
                short_body = await short
        code = await anyio.to_thread.run_sync(proxy.wait, DRAIN_SECONDS + 5)
        exited = time.monotonic() - sent

    assert exited <= DRAIN_SECONDS + 2, f"exited {exited:.2f} s after SIGTERM"
    assert code in (0, -signal.SIGTERM)
    for body in bodies[:10]:
        assert_chat_stream_cancelled(body)
    for body in bodies[10:]:
        assert_openai_stream_ended_with_shutdown_error(body)
    assert parse(short_body).events[-1].type == "done"  # it finished inside the drain
    records = upstream.records_for("stall?n=2")
    assert len(records) == before  # the refused requests never went upstream
    assert all(r.closed.wait(2) for r in records[-20:]), "every upstream connection is closed"
    log = proxy.log()
    assert log.count("outcome=server_shutdown") >= 20, log
    assert "Traceback" not in log, log
    assert "Exception in ASGI" not in log
    assert "outcome=disconnected" not in log


async def test_a_non_stream_request_open_at_the_end_of_the_drain_gets_503_json(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    config = write_config(tmp_path, upstream, drain=0.5)
    with served(config) as proxy:
        async with httpx.AsyncClient(timeout=15) as client:
            body = {"model": "stall", "messages": [{"role": "user", "content": "hi"}]}
            pending = asyncio.ensure_future(client.post(f"{proxy.base}/v1/chat/completions", json=body))
            await anyio.to_thread.run_sync(upstream.wait_for_request, "stall?n=2")
            proxy.signal(signal.SIGTERM)
            with anyio.fail_after(5):
                response = await pending
        await anyio.to_thread.run_sync(proxy.wait, 5)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "server_shutdown"


async def test_workers_drain_too(tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer) -> None:
    state = f"state: {{redis_url: '{redis_server.url}', key_prefix: 'drain-{uuid.uuid4().hex}:'}}\n"
    config = write_config(tmp_path, upstream, extra=state)
    with served(config, workers=2) as proxy:
        async with httpx.AsyncClient(timeout=15, limits=httpx.Limits(max_connections=16)) as client:
            opened = [anyio.Event() for _ in range(4)]
            streams = [
                asyncio.ensure_future(open_stream(client, proxy.base, "chat", "stall", event)) for event in opened
            ]
            with anyio.fail_after(10):
                for event in opened:
                    await event.wait()
            sent = proxy.signal(signal.SIGTERM)
            await wait_until_draining_everywhere(client, proxy)
            refused = await client.post(f"{proxy.base}/chat/stream", json={"model": "stall", "prompt": "late"})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "server_shutdown"
            with anyio.fail_after(DRAIN_SECONDS + 5):
                bodies = await asyncio.gather(*streams)
        await anyio.to_thread.run_sync(proxy.wait, DRAIN_SECONDS + 5)
        exited = time.monotonic() - sent
    assert exited <= DRAIN_SECONDS + 2.5
    for body in bodies:
        assert_chat_stream_cancelled(body)


async def wait_until_draining_everywhere(client: httpx.AsyncClient, proxy: ServedProcess) -> None:
    # Both workers log the start of their drain; after that every connection, on either, is refused with 503.
    await anyio.to_thread.run_sync(
        lambda: proxy.wait_for_lines(lambda lines: sum("shutdown: draining" in x for x in lines) >= 2, 5)
    )
