"""Resume anywhere: a dropped stream goes on from where it stopped, on any replica, with no duplicate, no gap and
no second upstream request.

Real tokenrelay processes (two sharing one fixture-started redis-server, or one with the memory backend) before
the fake upstream, which counts the requests each test's own upstream model gets; clients read raw SSE with a
WHATWG parser and come back with `Last-Event-ID`, as EventSource does.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
from pathlib import Path

import httpx
import pytest

from bench.fake_upstream import FakeUpstream
from tests.e2e.test_registry import eventually
from tests.support.processes import served
from tests.support.redis_server import RedisServer
from tests.support.resume import (
    ADMIN,
    AUTH,
    OTHER,
    Read,
    assert_one_ending,
    assert_seamless,
    read,
    resume_config,
    upstream_text,
)

pytestmark = pytest.mark.anyio

QUERY = "/chat/stream?model=story&prompt=tell%20me"


async def test_a_stream_dropped_on_one_replica_resumes_on_the_other(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    path, model = resume_config(tmp_path, upstream.base_url, redis_url=redis_server.url)
    with served(path) as a, served(path) as b:
        async with httpx.AsyncClient(timeout=10) as client:
            first = await read(client, a.base + QUERY, headers=AUTH, at_least=10)
            assert first.status == 200
            rest = await read(client, b.base + QUERY, headers={**AUTH, "last-event-id": first.last_id})
            counters = (await client.get(f"{a.base}/admin/replica", headers=ADMIN)).json()
            assert (await client.get(f"{a.base}/admin/replica", headers=AUTH)).status_code == 403
    assert rest.status == 200
    assert_seamless(first, rest)
    assert first.text() + rest.text() == upstream_text(60)
    assert rest.events[-1].type == "done"
    assert len(upstream.records_for(model)) == 1
    # The producing replica wrote the log in a few pipelines (one per flush, not per frame), none failed.
    assert counters["log_flusher"]["failures"] == 0
    assert 1 <= counters["log_flusher"]["pipelines"] <= len(first.events + rest.events)


async def test_a_stream_dropped_resumes_on_the_same_process_with_the_memory_backend(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    path, model = resume_config(tmp_path, upstream.base_url)
    with served(path) as a:
        async with httpx.AsyncClient(timeout=10) as client:
            first = await read(client, a.base + QUERY, headers=AUTH, at_least=10)
            rest = await read(client, a.base + QUERY, headers={**AUTH, "last-event-id": first.last_id})
            counters = (await client.get(f"{a.base}/admin/replica", headers=ADMIN)).json()
    assert_seamless(first, rest)
    assert first.text() + rest.text() == upstream_text(60)
    assert len(upstream.records_for(model)) == 1
    assert counters["log_flusher"] is None  # one process, no shared store to write to


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_two_hundred_random_drops_lose_and_repeat_nothing(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer, backend: str
) -> None:
    redis_url = redis_server.url if backend == "redis" else ""
    path, model = resume_config(tmp_path, upstream.base_url, redis_url=redis_url, n=30, gap_ms=2)
    rng = random.Random(20261203)  # noqa: S311 - seeded drop points, not a secret
    duplicates = gaps = 0
    with served(path) as a, served(path) as b:
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=40)) as client:

            async def once(i: int) -> None:
                nonlocal duplicates, gaps
                here, there = (a, b) if backend == "redis" and i % 2 else (a, a)
                first = await read(client, here.base + QUERY, headers=AUTH, at_least=rng.randint(1, 33))
                rest = await read(client, there.base + QUERY, headers={**AUTH, "last-event-id": first.last_id})
                if rest.status == 204:  # it had ended, and the client held its last frame
                    rest.events = []
                seqs = first.seqs + rest.seqs
                duplicates += len(seqs) - len(set(seqs))
                gaps += max(seqs) + 1 - len(set(seqs))
                assert first.text() + rest.text() == upstream_text(30)
                assert_one_ending(first.events + rest.events)

            for start in range(0, 200, 20):
                await asyncio.gather(*(once(i) for i in range(start, start + 20)))
    assert (duplicates, gaps) == (0, 0)
    assert len(upstream.records_for(model)) == 200


async def test_resume_answers_by_what_the_log_holds(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    path, _ = resume_config(tmp_path, upstream.base_url, redis_url=redis_server.url, n=20, gap_ms=3)
    with served(path) as a, served(path) as b:
        async with httpx.AsyncClient(timeout=10) as client:
            whole = await read(client, a.base + QUERY, headers=AUTH)
            assert whole.events[-1].type == "done"
            stream_id = whole.headers["x-tokenrelay-stream-id"]
            for replica in (a, b):
                # After the terminal frame: nothing left, and EventSource stops on a 204.
                after_done = await read(client, replica.base + QUERY, headers={**AUTH, "last-event-id": whole.last_id})
                assert after_done.status == 204
                # From an earlier id: the rest, then the terminal frame, byte for byte as the first client got it.
                middle = whole.events[5].last_event_id
                rest = await read(client, replica.base + QUERY, headers={**AUTH, "last-event-id": middle})
                assert rest.status == 200
                assert rest.events == whole.events[6:]
                by_url = await read(client, f"{replica.base}/chat/streams/{stream_id}?after=5", headers=AUTH)
                assert by_url.events == whole.events[6:]
                for bad in ("garbage", f"{stream_id}.x", f"{stream_id}.1 2", "a" * 129 + ".1", f"{stream_id}.-1"):
                    answer = await client.get(replica.base + QUERY, headers={**AUTH, "last-event-id": bad})
                    assert answer.status_code == 400, bad
                    assert answer.json()["error"]["param"] == "Last-Event-ID"
                # Control characters the HTTP parser itself refuses: a 400 all the same, and nothing replayed.
                for bad in (f"{stream_id}.1\x01", f"{stream_id}.1\x7f"):
                    answer = await client.get(replica.base + QUERY, headers={**AUTH, "last-event-id": bad})
                    assert answer.status_code == 400
                foreign = await client.get(replica.base + QUERY, headers={**OTHER, "last-event-id": middle})
                unknown = await client.get(replica.base + QUERY, headers={**AUTH, "last-event-id": "nosuchstream.3"})
                for answer in (foreign, unknown):
                    assert answer.status_code == 404
                    assert answer.json()["error"]["code"] == "stream_not_found"
                    assert "event:" not in answer.text


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_an_expired_or_truncated_log_replays_nothing(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer, backend: str
) -> None:
    redis_url = redis_server.url if backend == "redis" else ""
    path, _ = resume_config(
        tmp_path, upstream.base_url, redis_url=redis_url, n=300, gap_ms=1, retention=1, max_bytes=4096
    )
    with served(path) as a:
        async with httpx.AsyncClient(timeout=10) as client:
            whole = await read(client, a.base + QUERY, headers=AUTH)
            assert whole.events[-1].type == "done"
            early = whole.events[2].last_event_id
            truncated = await client.get(a.base + QUERY, headers={**AUTH, "last-event-id": early})
            assert truncated.status_code == 410
            assert truncated.json()["error"]["code"] == "stream_truncated"
            # What the log still holds is served: the last frames.
            tail = await read(client, a.base + QUERY, headers={**AUTH, "last-event-id": whole.events[-3].last_event_id})
            assert tail.events == whole.events[-2:]

            async def expired() -> bool:
                answer = await client.get(
                    a.base + QUERY, headers={**AUTH, "last-event-id": whole.events[-3].last_event_id}
                )
                return answer.status_code == 404 and answer.json()["error"]["code"] == "stream_not_found"

            await eventually(expired)  # retention is 1 s: another process's timer, seen only over HTTP


async def test_a_dropped_get_stream_is_stopped_after_the_grace_unless_someone_comes_back(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    path, model = resume_config(tmp_path, upstream.base_url, n=400, gap_ms=20, grace=1)
    with served(path) as a:
        async with httpx.AsyncClient(timeout=15) as client:
            dropped = await read(client, a.base + QUERY, headers=AUTH, at_least=3)
            left = asyncio.get_running_loop().time()
            (record,) = upstream.records_for(model)
            # Nobody comes back: the upstream is closed once the grace is over, not before.
            closed = await asyncio.to_thread(record.closed.wait, 5)
            assert closed
            waited = asyncio.get_running_loop().time() - left
            assert 0.8 <= waited <= 3, waited
            rest = await read(client, a.base + QUERY, headers={**AUTH, "last-event-id": dropped.last_id})
            assert rest.events[-1].type == "cancel"
            assert json.loads(rest.events[-1].data)["reason"] == "client"

            # Coming back within the grace: the same upstream request goes on to the end.
            path2, model2 = resume_config(tmp_path, upstream.base_url, n=80, gap_ms=20, grace=1)
    with served(path2) as a:
        async with httpx.AsyncClient(timeout=15) as client:
            first = await read(client, a.base + QUERY, headers=AUTH, at_least=3)
            await asyncio.sleep(0.5)  # the client's own absence, shorter than the grace: what is under test
            rest = await read(client, a.base + QUERY, headers={**AUTH, "last-event-id": first.last_id})
    assert_seamless(first, rest)
    assert first.text() + rest.text() == upstream_text(80)
    assert len(upstream.records_for(model2)) == 1


async def test_a_post_stream_is_closed_at_once_unless_it_asks_to_be_resumable(
    tmp_path: Path, upstream: FakeUpstream
) -> None:
    path, model = resume_config(tmp_path, upstream.base_url, n=400, gap_ms=20, grace=5)
    with served(path) as a:
        async with httpx.AsyncClient(timeout=15) as client:
            body = {"model": "story", "prompt": "hi"}
            await read(client, a.base + "/chat/stream", method="POST", body=body, headers=AUTH, at_least=3)
            left = asyncio.get_running_loop().time()
            (record,) = upstream.records_for(model)
            assert await asyncio.to_thread(record.closed.wait, 2)
            assert asyncio.get_running_loop().time() - left < 0.1
            first = await read(
                client,
                a.base + "/chat/stream",
                method="POST",
                body={**body, "resumable": True},
                headers=AUTH,
                at_least=3,
            )
            rest = await read(client, a.base + QUERY, headers={**AUTH, "last-event-id": first.last_id}, at_least=3)
    assert rest.seqs[0] == first.seqs[-1] + 1  # the resumable POST went on after its client left
    assert len(upstream.records_for(model)) == 2


@pytest.mark.parametrize("backend", ["memory", "redis"])
async def test_a_detached_stream_runs_to_its_end_unwatched(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer, backend: str
) -> None:
    redis_url = redis_server.url if backend == "redis" else ""
    path, model = resume_config(tmp_path, upstream.base_url, redis_url=redis_url, n=40, gap_ms=5, grace=0)
    with served(path) as a, served(path) as b:
        async with httpx.AsyncClient(timeout=15) as client:
            created = await client.post(f"{a.base}/chat/streams", json={"model": "story", "prompt": "hi"}, headers=AUTH)
            assert created.status_code == 201, created.text
            url = created.json()["url"]
            assert created.headers["location"] == url
            (record,) = upstream.records_for(model)

            async def answered() -> bool:
                return record.finished_at is not None

            # The upstream sent its whole answer (a closed connection would end it early): nobody watched.
            await eventually(answered)
            assert not record.closed.is_set()
            watcher = b if backend == "redis" else a
            later = await read(client, watcher.base + url, headers=AUTH)
            assert later.text() == upstream_text(40)
            assert later.events[-1].type == "done"
            refused = await client.post(
                f"{a.base}/chat/streams", json={"model": "nosuch", "prompt": "hi"}, headers=AUTH
            )
            assert refused.status_code == 404
            assert "id" not in refused.json()


async def test_a_detached_stream_refused_upstream_gets_the_real_status(tmp_path: Path, upstream: FakeUpstream) -> None:
    path = tmp_path / "refused.yaml"
    path.write_text(
        f"providers:\n  fake: {{type: openai, base_url: '{upstream.base_url}', api_key: sk-test}}\n"
        "models:\n  busy: {provider: fake, model: 'status?code=429&retry_after=7'}\n"
        "routing: {attempts_per_target: 1}\n"
        "limits: {requests_per_minute: 0, concurrent_streams: 0}\n"
    )
    with served(path) as a:
        async with httpx.AsyncClient(timeout=15) as client:
            refused = await client.post(f"{a.base}/chat/streams", json={"model": "busy", "prompt": "hi"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "upstream_rate_limited"
    assert refused.headers["retry-after"] == "7"


async def test_a_killed_producer_ends_its_watchers_streams_as_lost(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    path, _ = resume_config(tmp_path, upstream.base_url, redis_url=redis_server.url, n=2000, gap_ms=10, ttl=1)
    with served(path) as a, served(path) as b:
        async with httpx.AsyncClient(timeout=20) as client:
            first = await read(client, a.base + QUERY, headers=AUTH, at_least=20)
            resume = {**AUTH, "last-event-id": first.last_id}
            following = [asyncio.Event(), asyncio.Event()]
            watchers = [
                asyncio.create_task(read(client, b.base + QUERY, headers=resume, following=f)) for f in following
            ]
            async with asyncio.timeout(10):
                await asyncio.gather(*(f.wait() for f in following))
            os.killpg(a.process.pid, signal.SIGKILL)
            a.process.wait(5)
            async with asyncio.timeout(15):
                one, two = await asyncio.gather(*watchers)
    for watched in (one, two):
        ending = watched.events[-1]
        assert ending.type == "error"
        assert json.loads(ending.data)["code"] == "stream_lost"
        assert json.loads(ending.data)["retryable"] is True
        assert [e.type for e in watched.events[:-1]] == ["token"] * (len(watched.events) - 1)
        replayed = first.text() + watched.text()
        assert upstream_text(2000).startswith(replayed)
        assert watched.seqs == list(range(first.seqs[-1] + 1, first.seqs[-1] + 1 + len(watched.seqs)))
    assert one.events[-1] == two.events[-1]


async def test_a_producer_killed_before_its_frames_were_stored_still_ends_as_lost(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    # A flush interval longer than the stream runs here: Redis knows the stream (announced at creation) but
    # holds none of its frames, and the clients hold more than the log.
    path, _ = resume_config(
        tmp_path, upstream.base_url, redis_url=redis_server.url, n=2000, gap_ms=10, ttl=1, flush_ms=5000
    )
    with served(path) as a, served(path) as b:
        async with httpx.AsyncClient(timeout=20) as client:
            first = await read(client, a.base + QUERY, headers=AUTH, at_least=10)
            os.killpg(a.process.pid, signal.SIGKILL)
            a.process.wait(5)
            last = first.seqs[-1]
            stream_id = first.last_id.rsplit(".", 1)[0]
            async with asyncio.timeout(15):
                ahead, behind = await asyncio.gather(
                    read(client, b.base + QUERY, headers={**AUTH, "last-event-id": first.last_id}),
                    read(client, b.base + QUERY, headers={**AUTH, "last-event-id": f"{stream_id}.{last - 3}"}),
                )
            # Every client gets the one ending (never a frame it holds again), whichever watcher wrote it.
            for watched in (ahead, behind):
                assert watched.status == 200
                assert [e.type for e in watched.events] == ["error"]
                assert json.loads(watched.events[0].data)["code"] == "stream_lost"
            assert ahead.events == behind.events
            # Its own id says nothing more is coming: EventSource reconnecting with it hears 204.
            again = await client.get(b.base + QUERY, headers={**AUTH, "last-event-id": ahead.last_id})
            assert again.status_code == 204


async def test_a_live_watcher_is_told_of_frames_the_log_dropped_before_storing_them(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    # A 4 KiB log flushed only at its end: by then its first frames are gone from it, never stored.
    path, _ = resume_config(
        tmp_path, upstream.base_url, redis_url=redis_server.url, n=1000, gap_ms=1, max_bytes=4096, flush_ms=5000
    )
    with served(path) as a, served(path) as b:
        async with httpx.AsyncClient(timeout=20) as client:
            first = await read(client, a.base + QUERY, headers=AUTH, at_least=2)
            async with asyncio.timeout(15):
                watched = await read(client, b.base + QUERY, headers={**AUTH, "last-event-id": first.last_id})
    assert watched.status == 200
    ending = watched.events[-1]
    assert ending.type == "error"
    assert json.loads(ending.data)["code"] == "stream_truncated"
    assert all(e.type == "token" for e in watched.events[:-1])
    # Whatever came before it continues the client's frames with no hole (the frames before the hole).
    relayed = [int(e.last_event_id.rsplit(".", 1)[1]) for e in watched.events[:-1]]
    assert relayed == list(range(first.seqs[-1] + 1, first.seqs[-1] + 1 + len(relayed)))


async def test_a_resume_reaching_a_draining_replica_is_sent_on_at_once(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    path, model = resume_config(tmp_path, upstream.base_url, redis_url=redis_server.url, n=300, gap_ms=10)
    path.write_text(path.read_text() + "server: {drain_seconds: 20}\n")
    with served(path) as a, served(path) as b:
        async with httpx.AsyncClient(timeout=15) as client:
            first = await read(client, a.base + QUERY, headers=AUTH, at_least=5)
            # A stream of B's own keeps B draining (and still answering) for as long as it runs.
            held = asyncio.Event()
            own = asyncio.create_task(read(client, b.base + QUERY, headers=AUTH, following=held))
            async with asyncio.timeout(10):
                await held.wait()
            b.signal(signal.SIGTERM)
            await asyncio.to_thread(b.wait_for_lines, lambda lines: any("shutdown: draining" in x for x in lines))
            async with client.stream(
                "GET", b.base + QUERY, headers={**AUTH, "last-event-id": first.last_id}
            ) as sent_on:
                body = await sent_on.aread()
            assert sent_on.status_code == 200
            # No frame and no terminal frame: only a short retry, so EventSource reconnects (elsewhere) at once.
            assert body.startswith(b"retry: "), body
            assert b"data:" not in body
            rest = await read(client, a.base + QUERY, headers={**AUTH, "last-event-id": first.last_id})
            own.cancel()
    assert_seamless(first, rest)
    assert first.text() + rest.text() == upstream_text(300)
    assert len(upstream.records_for(model)) == 2  # A's stream and B's own: the resumes made none


async def test_a_replica_shutting_down_hands_its_watchers_of_other_streams_on(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    path, model = resume_config(tmp_path, upstream.base_url, redis_url=redis_server.url, n=300, gap_ms=10)
    path.write_text(path.read_text() + "server: {drain_seconds: 0.5}\n")
    with served(path) as a, served(path) as b:
        async with httpx.AsyncClient(timeout=15) as client:
            first = await read(client, a.base + QUERY, headers=AUTH, at_least=5)
            following = asyncio.Event()
            watching = asyncio.create_task(
                read(client, b.base + QUERY, headers={**AUTH, "last-event-id": first.last_id}, following=following)
            )
            async with asyncio.timeout(10):
                await following.wait()
            b.signal(signal.SIGTERM)
            async with asyncio.timeout(10):
                handed_on = await watching
            # No terminal frame (the stream goes on elsewhere): EventSource reconnects, and A serves the rest.
            assert handed_on.events
            assert handed_on.events[-1].type == "token"
            rest = await read(client, a.base + QUERY, headers={**AUTH, "last-event-id": handed_on.last_id})
    assert_seamless(first, Read(200, handed_on.events + rest.events))
    assert first.text() + handed_on.text() + rest.text() == upstream_text(300)
    assert len(upstream.records_for(model)) == 1


async def test_a_watcher_elsewhere_from_the_start_gets_it_all_before_anything_was_stored(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    # Flushed only at its start (the announcement) and its end: B follows a log that holds nothing yet.
    path, model = resume_config(
        tmp_path, upstream.base_url, redis_url=redis_server.url, n=100, gap_ms=10, flush_ms=5000
    )
    with served(path) as a, served(path) as b:
        async with httpx.AsyncClient(timeout=15) as client:
            created = await client.post(f"{a.base}/chat/streams", json={"model": "story", "prompt": "go"}, headers=AUTH)
            assert created.status_code == 201
            whole = await read(client, f"{b.base}/chat/streams/{created.json()['id']}", headers=AUTH)
    assert whole.status == 200
    assert whole.seqs == list(range(len(whole.events)))
    assert whole.events[-1].type == "done"
    assert whole.text() == upstream_text(100)
    assert len(upstream.records_for(model)) == 1


async def test_a_stream_silent_for_longer_than_the_retention_time_still_resumes_elsewhere(
    tmp_path: Path, upstream: FakeUpstream, redis_server: RedisServer
) -> None:
    # Committed by a keep-alive after 0.2 s, then silent for 3 s (its first token): three times the retention
    # time, which its keys in Redis must outlive while the stream runs.
    path, model = resume_config(
        tmp_path, upstream.base_url, redis_url=redis_server.url, n=20, retention=1, first_ms=3000, ping_seconds=0.2
    )
    with served(path) as a, served(path) as b:
        async with httpx.AsyncClient(timeout=15) as client:
            first = await read(client, a.base + QUERY, headers=AUTH, at_least=1)
            assert [e.type for e in first.events] == ["start"]
            await asyncio.sleep(2)  # the scenario itself: no frame for twice the retention time
            rest = await read(client, b.base + QUERY, headers={**AUTH, "last-event-id": first.last_id})
    assert rest.status == 200
    assert_seamless(first, rest)
    assert rest.text() == upstream_text(20)
    assert len(upstream.records_for(model)) == 1
