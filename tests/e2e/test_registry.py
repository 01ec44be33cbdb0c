"""The registry of open streams, read through the admin API: across replicas sharing Redis, and in one process.

Two real tokenrelay processes share one fixture-started redis-server; clients are real HTTP clients. A record
appears within one heartbeat (a third of the lease TTL), so reads are repeated, bounded, until then.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_shared_limits import serve
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

CLIENT_KEY = "client-key-0123456789abcdef"
ADMIN_KEY = "admin-key-0123456789abcdef"
CLIENT = {"authorization": f"Bearer {CLIENT_KEY}"}
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}
LONG_PROMPT = {"prompt": " ".join(f"w{i}" for i in range(400))}  # the echo provider answers it word by word


def config(tmp_path: Path, redis_url: str, *, admin: bool = True, concurrent: int = 0, ttl: float = 3) -> Path:
    """A record lives `ttl` seconds unless renewed; the tests that check a removal give it longer than they wait,
    so that only the stream's own end can have removed it."""
    digest = hashlib.sha256(CLIENT_KEY.encode()).hexdigest()
    admin_digest = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
    admin_keys = f"  admin_keys: [{{id: ops, sha256: {admin_digest}}}]\n" if admin else ""
    path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(
        "providers:\n  echo: {type: echo, tokens_per_second: 20, first_token_delay_ms: 0}\n"
        "models:\n  echo: {provider: echo, model: echo}\n"
        f"auth:\n  keys: [{{id: client, sha256: {digest}}}]\n{admin_keys}"
        f"limits: {{requests_per_minute: 0, concurrent_streams: {concurrent}, lease_ttl_seconds: {ttl}}}\n"
        f"state: {{redis_url: '{redis_url}', key_prefix: 'reg-{uuid.uuid4().hex[:8]}:'}}\n"
    )
    return path


async def eventually(check: Callable[[], Awaitable[Any]], seconds: float = 5.0) -> Any:
    """`check()` until it returns something true, for at most `seconds` (a record shows within a heartbeat)."""
    async with asyncio.timeout(seconds):
        while True:
            if result := await check():
                return result
            # Another process's state, read over HTTP: there is no event to await, only the next read.
            await asyncio.sleep(0.05)


async def listed(client: httpx.AsyncClient, base: str, **filters: str) -> list[dict[str, Any]]:
    response = await client.get(f"{base}/admin/streams", headers=ADMIN, params=filters)
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


async def test_a_stream_on_one_replica_is_listed_by_the_other(tmp_path: Path, redis_server: RedisServer) -> None:
    path = config(tmp_path, redis_server.url)
    with serve(path) as (a, a_process), serve(path) as (b, _):
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("POST", f"{a}/chat/stream", json=LONG_PROMPT, headers=CLIENT) as held:
                chunks = held.aiter_raw()
                first = await chunks.__anext__()
                stream_id = first.split(b'"id":"', 1)[1].split(b'"', 1)[0].decode()
                records = await eventually(lambda: listed(client, b))
                (record,) = records
                assert record["id"] == stream_id
                assert record["principal"] == "key:client"
                assert (record["model"], record["provider"], record["upstream_model"]) == ("echo", "echo", "echo")
                assert record["api"] == "chat"
                assert record["state"] == "streaming"
                assert record["replica"].endswith(f"-{a_process.pid}")
                assert record["first_token_at"] >= record["started_at"] > 0
                (watcher,) = record["watchers"]
                assert (watcher["replica"], watcher["transport"]) == (record["replica"], "sse")
                one = await client.get(f"{b}/admin/streams/{stream_id}", headers=ADMIN)
                assert one.status_code == 200
                assert one.json()["id"] == stream_id

                async def grown() -> bool:
                    again = (await client.get(f"{b}/admin/streams/{stream_id}", headers=ADMIN)).json()
                    return bool(again["tokens_out"] > record["tokens_out"])

                await eventually(grown)
                assert await listed(client, b, replica=record["replica"]) == await listed(client, b)
                assert await listed(client, b, model="other") == []
                assert await listed(client, b, principal="address") == []
            # The client left: the stream ends, and its record goes with it at once, not at its TTL.
            await eventually(lambda: _none(listed(client, b)), seconds=0.9)
            gone = await client.get(f"{b}/admin/streams/{stream_id}", headers=ADMIN)
            assert gone.status_code == 404


async def _none(records: Awaitable[list[dict[str, Any]]]) -> bool:
    return not await records


async def test_a_killed_replica_leaves_no_record_and_frees_its_leases(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    path = config(tmp_path, redis_server.url, concurrent=10, ttl=1)
    with serve(path) as (a, a_process), serve(path) as (b, _):
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=20)) as client:
            streams = [client.stream("POST", f"{a}/chat/stream", json=LONG_PROMPT, headers=CLIENT) for _ in range(10)]
            responses = [await s.__aenter__() for s in streams]
            readers = [response.aiter_raw() for response in responses]  # kept: a dropped reader closes its stream
            for reader in readers:
                await reader.__anext__()
            await eventually(lambda: _count(listed(client, b), 10))
            refused = await client.post(f"{b}/chat/stream", json={"prompt": "hi"}, headers=CLIENT)
            assert refused.status_code == 429  # the ten leases are held
            os.killpg(a_process.pid, signal.SIGKILL)
            a_process.wait(10)
            for reader in readers:  # each client sees its stream cut: the replica is gone
                with pytest.raises(httpx.HTTPError):
                    async for _ in reader:
                        pass
            for s in streams:
                await s.__aexit__(None, None, None)
            # Within the TTL (1 s) of the last beat: no record left, and the principal may stream again.
            await eventually(lambda: _none(listed(client, b)), seconds=3)
            admitted = await client.post(f"{b}/chat/stream", json={"prompt": "hi"}, headers=CLIENT)
            assert admitted.status_code == 200


async def _count(records: Awaitable[list[dict[str, Any]]], wanted: int) -> bool:
    return len(await records) == wanted


async def test_the_admin_api_takes_admin_keys_only(tmp_path: Path) -> None:
    with serve(config(tmp_path, "")) as (base, _):
        async with httpx.AsyncClient(timeout=10) as client:
            url = f"{base}/admin/streams"
            assert (await client.get(url)).status_code == 401
            assert (await client.get(url, headers={"authorization": "Bearer not-a-key-at-all"})).status_code == 401
            forbidden = await client.get(url, headers=CLIENT)
            assert forbidden.status_code == 403
            assert forbidden.json()["error"]["code"] == "forbidden"
            assert (await client.get(url, headers=ADMIN)).status_code == 200
            assert (await client.get(f"{url}/no-such-stream", headers=ADMIN)).status_code == 404
            malformed = await client.get(f"{url}/bad%20id!", headers=ADMIN)
            assert malformed.status_code == 400
            bad_limit = await client.get(url, headers=ADMIN, params={"limit": "0"})
            assert bad_limit.status_code == 400
            assert "limit" in bad_limit.text
    with serve(config(tmp_path, "", admin=False)) as (base, _):
        async with httpx.AsyncClient(timeout=10) as client:
            assert (await client.get(f"{base}/admin/streams", headers=ADMIN)).status_code == 404


async def test_one_process_with_the_memory_backend_lists_its_streams(tmp_path: Path) -> None:
    with serve(config(tmp_path, "")) as (base, _):
        async with httpx.AsyncClient(timeout=10) as client:
            async with client.stream("POST", f"{base}/v1/chat/completions", headers=CLIENT, json={
                "model": "echo", "stream": True, "messages": [{"role": "user", "content": LONG_PROMPT["prompt"]}],
            }) as held:  # fmt: skip
                reader = held.aiter_raw()
                await reader.__anext__()
                (record,) = await eventually(lambda: listed(client, base))
                assert (record["api"], record["watchers"][0]["transport"]) == ("openai", "openai-sse")
            await eventually(lambda: _none(listed(client, base)), seconds=0.9)
