"""Limits shared through Redis hold across worker processes and replicas; a dead process's leases expire."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_cli import tokenrelay
from tests.support.processes import free_port
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio


def config(tmp_path: Path, redis_url: str, prefix: str, limits: str, tps: int = 0) -> Path:
    path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(
        "providers:\n"
        f"  echo: {{type: echo, tokens_per_second: {tps}, first_token_delay_ms: 0}}\n"
        "models:\n  echo: {provider: echo, model: echo}\n"
        f"limits: {{{limits}}}\n"
        f"state: {{redis_url: '{redis_url}', key_prefix: '{prefix}'}}\n"
    )
    return path


@contextmanager
def serve(path: Path, workers: int = 1) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("TOKENRELAY_CONFIG", "REDIS_URL")}
    process = subprocess.Popen(
        [*tokenrelay(), "serve", "--port", str(port), "--config", str(path), "--workers", str(workers)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        start_new_session=True,
    )
    assert process.stdout is not None
    ready = 0
    for line in process.stdout:  # every worker announces its startup: wait for all of them
        ready += "Application startup complete" in line
        if ready == workers:
            break
    else:
        raise AssertionError("tokenrelay serve exited before it was ready")
    drain = threading.Thread(target=process.stdout.read, daemon=True)
    drain.start()
    try:
        yield f"http://127.0.0.1:{port}", process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(20)
        drain.join(5)
        process.stdout.close()


async def burst(base: str, count: int) -> list[int]:
    limits = httpx.Limits(max_connections=count)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        responses = await asyncio.gather(
            *(client.post(f"{base}/chat/stream", json={"prompt": "hi"}) for _ in range(count))
        )
    return [r.status_code for r in responses]


async def test_four_workers_sharing_redis_admit_exactly_the_limit(tmp_path: Path, redis_server: RedisServer) -> None:
    path = config(
        tmp_path, redis_server.url, f"w4-{uuid.uuid4().hex}:", "requests_per_minute: 50, concurrent_streams: 0"
    )
    with serve(path, workers=4) as (base, _):
        statuses = await burst(base, 200)
    assert statuses.count(200) == 50
    assert statuses.count(429) == 150


async def test_one_process_in_memory_admits_exactly_the_limit(tmp_path: Path) -> None:
    path = config(tmp_path, "", "mem:", "requests_per_minute: 50, concurrent_streams: 0")
    with serve(path) as (base, _):
        statuses = await burst(base, 200)
    assert (statuses.count(200), statuses.count(429)) == (50, 150)


async def test_the_lease_of_a_killed_process_expires(tmp_path: Path, redis_server: RedisServer) -> None:
    prefix = f"kill-{uuid.uuid4().hex}:"
    limits = "requests_per_minute: 0, concurrent_streams: 1, lease_ttl_seconds: 1"
    slow = config(tmp_path, redis_server.url, prefix, limits, tps=2)
    with serve(slow) as (doomed, process), serve(slow) as (survivor, _):
        async with httpx.AsyncClient(timeout=10) as client:
            body = {"prompt": "a long question " * 20}
            async with client.stream("POST", f"{doomed}/chat/stream", json=body) as held:
                chunks = held.aiter_raw()
                await chunks.__anext__()  # the stream is open and holds the principal's only lease
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(10)
            refused = await client.post(f"{survivor}/chat/stream", json={"prompt": "hi"})
            assert refused.status_code == 429, "the dead process's lease should still count until its TTL"
            for _ in range(60):  # the TTL is 1 s: ask again, bounded, until it has expired
                admitted = await client.post(f"{survivor}/chat/stream", json={"prompt": "hi"})
                if admitted.status_code == 200:
                    break
                await asyncio.sleep(0.05)
            assert admitted.status_code == 200
