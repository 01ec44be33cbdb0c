"""A finished request leaves nothing for the garbage collector.

One reference cycle anywhere in a request's objects (a bound method kept on its own object, a callback in the
scope that points back at the connection) keeps all of them (stream, encoder, admission, uvicorn's cycle, the
transport) alive until a collection finds them: memory per stream grows, and with thousands of streams open the
collector's passes over them stall every stream (bench/, 5,000 open streams). So the objects of a finished
request must go by reference counting alone.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Iterator

import httpx
import pytest

from app.disconnect import DisconnectWatch
from app.streams import StreamRun
from bench.fake_upstream import FakeUpstream
from tests.support.logs import RecordCollector
from tests.support.redis_server import RedisServer
from tests.support.servers import proxy_settings, running_proxy

pytestmark = pytest.mark.anyio


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.mark.parametrize("backend", ["memory", "redis"])
@pytest.mark.usefixtures("collector_off")
async def test_finished_streams_are_freed_without_the_garbage_collector(
    upstream: FakeUpstream, logs: RecordCollector, redis_server: RedisServer, backend: str
) -> None:
    redis_url = redis_server.url if backend == "redis" else ""
    with running_proxy(proxy_settings(upstream, "gen?n=3", redis_url=redis_url)) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            for _ in range(3):
                chat = await client.post(f"{base}/chat/stream", json={"prompt": "hi", "model": "gen?n=3"})
                v1 = await client.post(
                    f"{base}/v1/chat/completions",
                    json={"model": "gen?n=3", "stream": True, "messages": [{"role": "user", "content": "hi"}]},
                )
                assert chat.status_code == v1.status_code == 200
                assert b"[DONE]" in v1.content
                # and the answers before a stream: a body refused, a model not found
                refused = await client.post(f"{base}/chat/stream", json={"prompt": ""})
                unknown = await client.post(
                    f"{base}/v1/chat/completions",
                    json={"model": "nope", "messages": [{"role": "user", "content": "x"}]},
                )
                assert (refused.status_code, unknown.status_code) == (422, 404)
        # A request's objects are released when its handler returns, just before its access line is written.
        await logs.wait_for(lambda seen: sum('HTTP/1.1" ' in m and "POST" in m for m in seen) >= 12)
        left = [o for o in gc.get_objects() if isinstance(o, StreamRun | DisconnectWatch)]
    assert left == [], f"{len(left)} objects of finished requests wait for the collector: {left[:3]}"


@pytest.mark.usefixtures("collector_off")
async def test_a_finished_resumable_stream_keeps_its_log_not_its_run(upstream: FakeUpstream) -> None:
    """A finished stream's log stays for late resumes (5 minutes by default); its run, with the admission, the
    encoder and the upstream state, must not stay with it."""
    with running_proxy(proxy_settings(upstream, "gen?n=5")) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            whole = await client.get(f"{base}/chat/stream", params={"prompt": "hi", "model": "gen?n=5"})
            assert whole.status_code == 200
            assert b"event: done" in whole.content
            first_id = next(line for line in whole.text.splitlines() if line.startswith("id: ")).removeprefix("id: ")
            rest = await client.get(
                f"{base}/chat/stream", params={"prompt": "hi", "model": "gen?n=5"}, headers={"last-event-id": first_id}
            )
            assert rest.status_code == 200
            assert b"event: done" in rest.content  # the log is kept: a late resume gets the rest
            # The producer lets go of its run when its task ends, just after the last frame went out: no event a
            # client can see marks it, so the heap is looked at until then (bounded).
            for _ in range(250):  # 5 s at most
                if not (left := [o for o in gc.get_objects() if isinstance(o, StreamRun)]):
                    break
                await asyncio.sleep(0.02)
    assert left == [], f"a finished resumable stream keeps {len(left)} run(s) alive with its log"
