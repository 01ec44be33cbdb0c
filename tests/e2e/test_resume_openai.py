"""A `/v1/chat/completions` stream that asks `"resumable": true`: it goes on after its client leaves, its chunks
carry ids, and `GET /chat/streams/{id}` with `Last-Event-ID` gives the rest of it, as OpenAI chunks, on any
replica. Real tokenrelay processes, one redis-server, the fake upstream; clients read raw SSE with a WHATWG
parser, as an SSE client that keeps the last id does.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path

import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from tests.support.processes import served
from tests.support.redis_server import RedisServer
from tests.support.resume import AUTH, Read, read, resume_config, upstream_text

pytestmark = pytest.mark.anyio

COMPLETIONS = "/v1/chat/completions"
BODY = {
    "model": "story",
    "messages": [{"role": "user", "content": "tell me"}],
    "stream": True,
    "stream_options": {"include_usage": True},
    "resumable": True,
}


def content(reads: list[Read]) -> str:
    """The answer the OpenAI chunks of `reads` carry."""
    text = []
    for event in (e for r in reads for e in r.events):
        if event.data == "[DONE]":
            continue
        chunk = json.loads(event.data)
        text += [c["delta"].get("content") or "" for c in chunk.get("choices", ())]
    return "".join(text)


def stream_of(first: Read) -> str:
    return first.last_id.rsplit(".", 1)[0]


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_resumable_openai_stream_dropped_goes_on_from_its_last_id(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer, backend: str
) -> None:
    redis_url = redis_server.url if backend == "redis" else ""
    path, model = resume_config(tmp_path, upstream.base_url, redis_url=redis_url)
    with served(path) as a, served(path) as b:
        there = b if backend == "redis" else a
        async with httpx.AsyncClient(timeout=10) as client:
            first = await read(client, a.base + COMPLETIONS, method="POST", body=BODY, headers=AUTH, at_least=10)
            assert first.status == 200
            url = f"{there.base}/chat/streams/{stream_of(first)}"
            rest = await read(client, url, headers={**AUTH, "last-event-id": first.last_id})
            again = await client.get(url, headers={**AUTH, "last-event-id": rest.last_id})
    assert first.headers["x-tokenrelay-stream-id"] == stream_of(first)
    assert rest.status == 200
    seqs = first.seqs + rest.seqs
    assert seqs == list(range(len(seqs)))
    assert all(e.type == "message" for e in first.events + rest.events)
    assert content([first, rest]) == upstream_text(60)
    # The usage chunk the client asked for, then `[DONE]`, as from an unresumable stream; nothing after it.
    assert json.loads(rest.events[-2].data)["usage"]["completion_tokens"] > 0
    assert rest.events[-1].data == "[DONE]"
    assert again.status_code == 204
    (record,) = upstream.records_for(model)
    assert "resumable" not in record.body  # tokenrelay's own field never reaches the upstream


async def test_an_unresumable_openai_stream_has_no_ids_and_cannot_be_resumed(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    path, model = resume_config(tmp_path, upstream.base_url, n=400, gap_ms=20)
    with served(path) as a:
        async with httpx.AsyncClient(timeout=10) as client:
            body = {**BODY, "resumable": False}
            first = await read(client, a.base + COMPLETIONS, method="POST", body=body, headers=AUTH, at_least=3)
            (record,) = upstream.records_for(model)
            assert await asyncio.to_thread(record.closed.wait, 2)  # closed at once: no tokens for nobody
            stream_id = first.headers["x-tokenrelay-stream-id"]
            resumed = await client.get(f"{a.base}/chat/streams/{stream_id}", headers=AUTH)
    assert {e.last_event_id for e in first.events} == {""}
    assert resumed.status_code == 404


async def test_a_resumable_openai_stream_without_stream_true_is_refused_naming_the_field(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    path, model = resume_config(tmp_path, upstream.base_url)
    with served(path) as a:
        async with httpx.AsyncClient(timeout=10) as client:
            body = {k: v for k, v in BODY.items() if k not in ("stream", "stream_options")}
            refused = await client.post(a.base + COMPLETIONS, json=body, headers=AUTH)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "resumable"
    assert upstream.records_for(model) == []


async def test_a_killed_producer_ends_a_resumed_openai_stream_with_an_openai_error(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    path, _ = resume_config(tmp_path, upstream.base_url, redis_url=redis_server.url, n=2000, gap_ms=10, ttl=1)
    with served(path) as a, served(path) as b:
        async with httpx.AsyncClient(timeout=20) as client:
            first = await read(client, a.base + COMPLETIONS, method="POST", body=BODY, headers=AUTH, at_least=20)
            following = asyncio.Event()
            url = f"{b.base}/chat/streams/{stream_of(first)}"
            watcher = asyncio.create_task(
                read(client, url, headers={**AUTH, "last-event-id": first.last_id}, following=following)
            )
            async with asyncio.timeout(10):
                await following.wait()
            os.killpg(a.process.pid, signal.SIGKILL)
            a.process.wait(5)
            async with asyncio.timeout(15):
                watched = await watcher
    # The ending an OpenAI client's parser knows (openai-python raises it as `APIError`), under the next id.
    ending = json.loads(watched.events[-1].data)
    assert ending["error"]["code"] == "stream_lost"
    seqs = first.seqs + watched.seqs
    assert seqs == list(range(len(seqs)))
    assert upstream_text(2000).startswith(content([first, watched]))
