"""A Redis that restarts (state lost, every pooled connection dead) leaves limits exact: at the first decision after
it is back, and for open-stream leases within one heartbeat."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

import anyio
import httpx
import pytest
from redis import asyncio as aioredis

from app.settings import Settings
from tests.support.redis_server import RedisServer
from tests.support.servers import proxy_settings, running_proxy
from tests.support.tcp_relay import SeveringRelay

pytestmark = pytest.mark.anyio

WARM_KEY = "warm-key-0123456789abcdef"
FRESH_KEY = "fresh-key-0123456789abcdef"


@pytest.fixture
def restartable_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


async def until_the_heartbeat_restores(url: str, key: str, count: int, *, seconds: float) -> None:
    """Wait, on Redis's keyspace notifications (no polling), until the sorted set `key` holds `count` members."""
    redis = aioredis.Redis.from_url(url)
    try:
        await redis.config_set("notify-keyspace-events", "Kz")
        async with redis.pubsub() as pubsub:
            await pubsub.subscribe(f"__keyspace@0__:{key}")
            with anyio.fail_after(seconds):
                while await redis.zcard(key) < count:  # checked after subscribing: no beat can slip through
                    await pubsub.get_message(ignore_subscribe_messages=True, timeout=seconds)
    finally:
        await redis.aclose()


def keyed_settings(redis_url: str, prefix: str, limits: Mapping[str, object], *, tps: float = 0) -> Settings:
    settings = proxy_settings(limits=dict(limits), redis_url=redis_url)
    keys: list[dict[str, Any]] = [
        {"id": "warm", "key": WARM_KEY, "limits": {"requests_per_minute": 0, "concurrent_streams": 0}},
        {"id": "fresh", "key": FRESH_KEY},
    ]
    echo = {"type": "echo", "tokens_per_second": tps, "first_token_delay_ms": 0}
    data: dict[str, Any] = settings.model_dump(mode="python")
    data["providers"]["echo"] = echo
    data["auth"] = {"keys": keys}
    data["state"]["key_prefix"] = prefix
    return Settings.model_validate(data)


async def burst(client: httpx.AsyncClient, base: str, key: str, count: int) -> list[int]:
    headers = {"authorization": f"Bearer {key}"}
    responses = await asyncio.gather(
        *(client.post(f"{base}/chat/stream", json={"prompt": "hi"}, headers=headers) for _ in range(count))
    )
    return [r.status_code for r in responses]


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_the_first_decisions_after_a_restart_are_exact(policy: str, restartable_redis: RedisServer) -> None:
    """Every pooled connection died with the restart, and (as across a network) nothing told the proxy so."""
    relay = await SeveringRelay(restartable_redis.port).start()
    limits = {"requests_per_minute": 20, "on_backend_failure": policy}
    settings = keyed_settings(relay.url, f"rs-{uuid.uuid4().hex}:", limits)
    try:
        with running_proxy(settings) as base:
            async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=64)) as client:
                # Fill the pool with connections that the restart will kill.
                assert set(await burst(client, base, WARM_KEY, 60)) == {200}
                restartable_redis.kill()
                relay.sever()
                restartable_redis.start()
                statuses = await burst(client, base, FRESH_KEY, 60)  # the first decisions after Redis is back
    finally:
        await relay.aclose()
    assert (statuses.count(200), statuses.count(429)) == (20, 40), statuses


async def test_leases_lost_in_a_restart_are_asserted_again_within_one_heartbeat(
    restartable_redis: RedisServer,
) -> None:
    ttl = 1.5  # the heartbeat runs every ttl / 3
    prefix = f"rl-{uuid.uuid4().hex}:"
    limits = {"requests_per_minute": 0, "concurrent_streams": 4, "lease_ttl_seconds": ttl}
    settings = keyed_settings(restartable_redis.url, prefix, limits, tps=2)
    headers = {"authorization": f"Bearer {FRESH_KEY}"}
    with running_proxy(settings) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            held = []
            for _ in range(4):
                request = client.build_request(
                    "POST", f"{base}/chat/stream", json={"prompt": "a b c d e f"}, headers=headers
                )
                response = await client.send(request, stream=True)
                assert response.status_code == 200
                held.append(response)
            refused = await client.post(f"{base}/chat/stream", json={"prompt": "hi"}, headers=headers)
            assert refused.status_code == 429

            restartable_redis.kill()
            restartable_redis.start()
            back = time.monotonic()
            await until_the_heartbeat_restores(restartable_redis.url, f"{prefix}{{key:fresh}}:conc", 4, seconds=ttl)
            reasserted = time.monotonic() - back
            refused = await client.post(f"{base}/chat/stream", json={"prompt": "hi"}, headers=headers)
            for response in held:
                await response.aclose()
    assert refused.status_code == 429, "a key holding 4 of 4 streams must not open a 5th after a restart"
    assert reasserted <= ttl / 3 + 0.3
