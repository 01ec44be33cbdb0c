"""Stopping a stream from anywhere: an admin on another replica, or the stream's own client.

Two real tokenrelay processes share one redis-server; the fake upstream (in this process) tells when the proxy
closed its connection. A stream's record shows within one heartbeat, so the tests wait for it before stopping.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from tests.e2e.test_registry import ADMIN, ADMIN_KEY, CLIENT, CLIENT_KEY, eventually
from tests.e2e.test_shared_limits import serve
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.anyio

OTHER_KEY = "other-client-key-0123456789"
STALL = "stall?n=3"  # three tokens, then silence until the proxy hangs up


def config(tmp_path: Path, upstream: FakeUpstream, redis_url: str, *, messages: bool = True) -> Path:
    digests = [hashlib.sha256(k.encode()).hexdigest() for k in (CLIENT_KEY, OTHER_KEY, ADMIN_KEY)]
    path = tmp_path / f"config-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(
        f"providers:\n  fake: {{type: openai, base_url: '{upstream.base_url}'}}\n"
        f"models:\n  '{STALL}': {{provider: fake, model: '{STALL}'}}\n"
        f"default_model: '{STALL}'\n"
        f"auth:\n  keys: [{{id: client, sha256: {digests[0]}}}, {{id: other, sha256: {digests[1]}}}]\n"
        f"  admin_keys: [{{id: ops, sha256: {digests[2]}}}]\n"
        "limits: {requests_per_minute: 0, concurrent_streams: 0, lease_ttl_seconds: 1.5}\n"
        f"state: {{redis_url: '{redis_url}', key_prefix: 'cancel-{uuid.uuid4().hex[:8]}:', "
        f"cancel_messages: {str(messages).lower()}}}\n"
    )
    return path


class Watched:
    """A client's stream: its id from the start frame, then its frames as they come."""

    def __init__(self, response: httpx.Response) -> None:
        self._lines: AsyncIterator[str] = response.aiter_lines()
        self.id = ""

    async def started(self) -> str:
        async for line in self._lines:
            if line.startswith("data: ") and '"id"' in line and not self.id:
                self.id = json.loads(line[6:])["id"]
            if line.startswith("event: token"):
                return self.id
        raise AssertionError("the stream ended before its first token")

    async def terminal(self) -> tuple[str, dict[str, object], float]:
        event = ""
        async for line in self._lines:
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: ") and event in ("done", "error", "cancel"):
                return event, json.loads(line[6:]), time.monotonic()
        raise AssertionError("the stream ended with no terminal frame")


async def stop_from(
    client: httpx.AsyncClient, stopper: str, owner: str, upstream: FakeUpstream, done: int, *, at_once: bool = False
) -> tuple[float, int]:
    """Open a stream on `owner`, stop it through `stopper`'s admin API (once listed there, or `at_once` after its
    start frame); seconds from the DELETE to the client's cancel frame."""
    async with client.stream("POST", f"{owner}/chat/stream", json={"prompt": "hi"}, headers=CLIENT) as response:
        watched = Watched(response)
        stream_id = await watched.started()
        if not at_once:
            await eventually(lambda: _listed(client, stopper, stream_id))
        began = time.monotonic()
        deleted = await client.delete(f"{stopper}/admin/streams/{stream_id}", headers=ADMIN)
        event, data, at = await watched.terminal()
    assert (event, data) == ("cancel", {"reason": "admin", "retryable": False})
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["id"] == stream_id
    assert deleted.json()["state"] == "cancelled"
    record = upstream.records_for(STALL)[done]
    assert await anyio.to_thread.run_sync(record.closed.wait, 5), "the upstream connection was left open"
    return at - began, deleted.status_code


async def _listed(client: httpx.AsyncClient, base: str, stream_id: str) -> bool:
    return (await client.get(f"{base}/admin/streams/{stream_id}", headers=ADMIN)).status_code == 200


async def test_an_admin_on_one_replica_stops_a_stream_on_the_other(tmp_path: Path, redis_server: RedisServer) -> None:
    upstream = FakeUpstream().start()
    try:
        path = config(tmp_path, upstream, redis_server.url)
        with serve(path) as (a, _), serve(path) as (b, _):
            async with httpx.AsyncClient(timeout=10) as client:
                took = [(await stop_from(client, b, a, upstream, i))[0] for i in range(20)]
                # A Stop pressed as soon as the stream started, before any heartbeat wrote its record.
                await stop_from(client, b, a, upstream, 20, at_once=True)
        assert statistics.median(took) < 0.1, took
    finally:
        upstream.stop()


async def test_a_lost_cancel_message_is_made_up_by_the_heartbeat(tmp_path: Path, redis_server: RedisServer) -> None:
    upstream = FakeUpstream().start()
    try:
        path = config(tmp_path, upstream, redis_server.url, messages=False)
        with serve(path) as (a, _), serve(path) as (b, _):
            async with httpx.AsyncClient(timeout=10) as client:
                took = [(await stop_from(client, b, a, upstream, i))[0] for i in range(3)]
        heartbeat = 1.5 / 3
        assert max(took) < heartbeat + 0.1, took
    finally:
        upstream.stop()


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_client_stops_its_own_stream_over_its_session(
    tmp_path: Path, redis_server: RedisServer, backend: str
) -> None:
    upstream = FakeUpstream().start()
    try:
        with serve(config(tmp_path, upstream, redis_server.url if backend == "redis" else "")) as (base, _):
            async with httpx.AsyncClient(timeout=10) as browser, httpx.AsyncClient(timeout=10) as stranger:
                login = await browser.post(f"{base}/auth/session", json={"api_key": CLIENT_KEY})
                assert login.status_code in (200, 201, 204), login.text
                async with browser.stream("GET", f"{base}/chat/stream", params={"prompt": "hi"}) as response:
                    watched = Watched(response)
                    stream_id = await watched.started()
                    other = {"authorization": f"Bearer {OTHER_KEY}"}
                    foreign = await stranger.delete(f"{base}/chat/streams/{stream_id}", headers=other)
                    assert foreign.status_code == 404  # another principal's stream does not exist for it
                    unknown = await browser.delete(f"{base}/chat/streams/no-such-stream")
                    assert unknown.status_code == 404
                    assert unknown.json()["error"]["code"] == "stream_not_found"
                    assert (await browser.delete(f"{base}/chat/streams/bad%20id!")).status_code == 400
                    # At once: its replica knows it from its first moment, before any heartbeat wrote its record.
                    own = await browser.delete(f"{base}/chat/streams/{stream_id}")
                    event, data, _ = await watched.terminal()
                assert (event, data) == ("cancel", {"reason": "client", "retryable": False})
                assert own.status_code == 200
                assert own.json()["state"] == "cancelled"
    finally:
        upstream.stop()


async def test_a_stopped_v1_stream_ends_with_a_cancelled_error_line(tmp_path: Path) -> None:
    upstream = FakeUpstream().start()
    try:
        with serve(config(tmp_path, upstream, "")) as (base, _):
            async with httpx.AsyncClient(timeout=10) as client:
                body = {"model": STALL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
                async with client.stream("POST", f"{base}/v1/chat/completions", json=body, headers=CLIENT) as held:
                    lines = held.aiter_lines()
                    await lines.__anext__()  # the first chunk: the stream is open
                    # The chunks carry the upstream's own ids (lossless pass-through); the stream's is a header.
                    stream_id = held.headers["x-tokenrelay-stream-id"]
                    deleted = await client.delete(f"{base}/admin/streams/{stream_id}", headers=ADMIN)
                    rest = [line async for line in lines if line.startswith("data: ")]
                assert deleted.status_code == 200
                assert json.loads(rest[-1][6:])["error"]["code"] == "cancelled"
    finally:
        upstream.stop()
