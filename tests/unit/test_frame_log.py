"""`FrameLog` and resume points: where a resume goes on, byte for byte, and which ids are refused."""

from __future__ import annotations

import asyncio

import pytest

from app.errors import InvalidRequest, StreamNotFound
from app.frame_log import TAIL_SEND_SECONDS, FrameLog, LogTruncated
from app.frames import DoneFrame, StartFrame, Usage
from app.resume import ResumePoint, parse_event_id, resume_point
from app.sse_transport import SSEEncoder
from providers.base import Delta, ToolCallDelta

pytestmark = pytest.mark.anyio


def _start() -> StartFrame:
    return StartFrame(id="s1", model="m", provider="p", upstream_model="u", created=1, request_id="r")


async def _log(max_bytes: int = 1 << 20) -> tuple[FrameLog, SSEEncoder, list[bytes]]:
    """A log fed as a producer feeds it: the start and the first token in one body, then one body per delta,
    one of them three frames (reasoning, text and a tool call read together); returns every frame too."""
    encoder = SSEEncoder("s1", 3000)
    log = FrameLog("s1", owner="o", request_id="r", max_bytes=max_bytes)
    bodies = [encoder.start(_start()) + encoder.delta(Delta(text="a"))]
    bodies += [encoder.delta(Delta(text=t)) for t in "bcd"]
    call = ToolCallDelta(index=0, id="c", name="f", arguments="{}")
    bodies.append(encoder.delta(Delta(text="e", reasoning="why", tool_calls=(call,))))
    bodies.append(encoder.end(DoneFrame(finish_reason="stop", usage=Usage(1, 2, 3), usage_source="provider")))
    await log.send({"type": "http.response.start", "status": 200, "headers": []})
    for i, body in enumerate(bodies):
        await log.send({"type": "http.response.body", "body": body, "more_body": i < len(bodies) - 1})
    frames = [f + b"\n\n" for f in b"".join(bodies).split(b"\n\n")[:-1]]
    return log, encoder, frames


async def test_every_resume_point_gets_exactly_the_frames_after_it() -> None:
    log, _, frames = await _log()
    assert log.ended
    assert log.last_seq == len(frames) - 1 == 8
    for seq in range(-1, len(frames)):
        prefix, position = log.position_after(seq)
        rest, _ = log.read(position)
        assert prefix + rest == b"".join(frames[seq + 1 :]), seq


async def test_a_client_ahead_of_the_log_gets_only_what_it_lacks() -> None:
    log, _, frames = await _log()
    for position in range(log.end):
        held = log.read(position)[0]
        for seq in range(-1, len(frames)):
            data, end = log.read_after(position, seq)
            assert end == log.end
            assert data == b"".join(f for f in frames if f in held and _seq(f) > seq), (position, seq)


def _seq(frame: bytes) -> int:
    return int(frame.split(b"id: s1.", 1)[1].split(b"\n", 1)[0])


async def test_the_byte_cap_drops_the_oldest_entries_and_refuses_resumes_from_them() -> None:
    log, _, frames = await _log(max_bytes=300)
    assert log.base > 0
    assert log.first_seq > 0
    with pytest.raises(LogTruncated):
        log.position_after(0)
    with pytest.raises(LogTruncated):
        log.read(0)
    prefix, position = log.position_after(log.first_seq - 1)
    assert prefix + log.read(position)[0] == b"".join(frames[log.first_seq :])


async def test_a_waiting_watcher_wakes_on_the_next_append_and_on_the_end() -> None:
    encoder = SSEEncoder("s2", 0)
    log = FrameLog("s2", owner="o", request_id="r", max_bytes=1 << 20)
    waiter = asyncio.ensure_future(log.wait(0))
    await asyncio.sleep(0)
    assert not waiter.done()
    await log.send({"type": "http.response.start", "status": 200, "headers": []})
    await log.send({"type": "http.response.body", "body": encoder.start(_start()), "more_body": True})
    async with asyncio.timeout(1):
        await waiter
    second = asyncio.ensure_future(log.wait(log.end))
    await asyncio.sleep(0)
    assert not second.done()
    await log.send({"type": "http.response.body", "body": b"", "more_body": False})
    async with asyncio.timeout(1):
        await second
    assert log.ended


@pytest.mark.parametrize(
    "value",
    [
        "",
        "abc",
        "abc.",
        ".1",
        "abc.01",
        "abc.-1",
        "abc.1.2",
        "a b.1",
        "abc.1\x00",
        "x" * 125 + ".12",
        "abc.99999999999",
    ],
)
def test_a_malformed_last_event_id_is_a_400_naming_it(value: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        parse_event_id(value)
    assert raised.value.status == 400
    assert raised.value.field == "Last-Event-ID"


def test_resume_points() -> None:
    assert parse_event_id("kQ2p1d3yOeJwK2xR.17") == ResumePoint("kQ2p1d3yOeJwK2xR", 17)
    assert resume_point("abc", None, None) == ResumePoint("abc", -1)
    assert resume_point("abc", None, "4") == ResumePoint("abc", 4)
    assert resume_point("abc", "abc.9", "4") == ResumePoint("abc", 9)  # the header wins
    with pytest.raises(InvalidRequest):
        resume_point("abc", "other.9", None)
    with pytest.raises(InvalidRequest):
        resume_point("abc", None, "x")
    with pytest.raises(StreamNotFound):
        resume_point("a/b", None, None)


async def test_a_tail_gets_each_body_inline_until_released_and_the_log_still_holds_them() -> None:
    log = FrameLog("s1", owner="o", request_id="r", max_bytes=1 << 20)
    await log.send({"type": "http.response.start", "status": 200, "headers": []})
    sent: list[tuple[bytes, bool]] = []

    async def tail(body: bytes, more: bool) -> None:
        sent.append((body, more))

    released = log.hand_tail(tail)
    await log.send({"type": "http.response.body", "body": b"id: s1.0\ndata: a\n\n", "more_body": True})
    assert sent == [(b"id: s1.0\ndata: a\n\n", True)]
    log.release_tail()  # a second watcher came: it follows the log in its own task
    assert released.done()
    await log.send({"type": "http.response.body", "body": b"id: s1.1\ndata: b\n\n", "more_body": False})
    assert len(sent) == 1
    assert log.read(0)[0] == b"id: s1.0\ndata: a\n\nid: s1.1\ndata: b\n\n"


async def test_a_tail_whose_client_broke_is_released_and_the_producer_goes_on() -> None:
    log = FrameLog("s1", owner="o", request_id="r", max_bytes=1 << 20)
    await log.send({"type": "http.response.start", "status": 200, "headers": []})

    async def broken(body: bytes, more: bool) -> None:
        raise OSError("connection reset")

    released = log.hand_tail(broken)
    await log.send({"type": "http.response.body", "body": b"id: s1.0\ndata: a\n\n", "more_body": True})
    assert released.done()
    assert log.end == 1


async def test_a_producer_that_died_releases_the_tail() -> None:
    log = FrameLog("s1", owner="o", request_id="r", max_bytes=1 << 20)
    await log.send({"type": "http.response.start", "status": 200, "headers": []})

    async def tail(body: bytes, more: bool) -> None:
        pass

    released = log.hand_tail(tail)
    log.abort("s1")
    assert released.done()
    assert b"event: error" in log.read(0)[0]


async def test_a_tail_that_stalls_is_released_within_its_bound_and_the_producer_goes_on() -> None:
    log = FrameLog("s1", owner="o", request_id="r", max_bytes=1 << 20)
    await log.send({"type": "http.response.start", "status": 200, "headers": []})
    stalled = asyncio.get_running_loop().create_future()
    sends: list[bytes] = []

    async def slow(body: bytes, more: bool) -> None:
        sends.append(body)
        if len(sends) == 1:
            await asyncio.sleep(0.001)  # a short wait on the socket: well within the bound
        else:
            await stalled  # a client that stopped reading

    released = log.hand_tail(slow)
    producer = asyncio.create_task(log.send({"type": "http.response.body", "body": b"a\n\n", "more_body": True}))
    await producer
    assert not released.done()
    second = asyncio.create_task(log.send({"type": "http.response.body", "body": b"b\n\n", "more_body": True}))
    async with asyncio.timeout(TAIL_SEND_SECONDS * 10):
        await second  # returns of itself: not cancelled, not stuck on the client
    assert not second.cancelled()
    assert released.done()
    assert log.end == 2
    await log.send({"type": "http.response.body", "body": b"c\n\n", "more_body": True})
    assert sends == [b"a\n\n", b"b\n\n"]  # the tail is the watcher's own task's again


async def test_a_producer_stopped_while_its_tail_stalls_is_cancelled() -> None:
    log = FrameLog("s1", owner="o", request_id="r", max_bytes=1 << 20)
    await log.send({"type": "http.response.start", "status": 200, "headers": []})
    entered = asyncio.Event()

    async def stalled(body: bytes, more: bool) -> None:
        entered.set()
        await asyncio.get_running_loop().create_future()

    released = log.hand_tail(stalled)
    producer = asyncio.create_task(log.send({"type": "http.response.body", "body": b"a\n\n", "more_body": True}))
    await entered.wait()
    producer.cancel()  # a stop (DELETE, shutdown) while the send waits: it must not pass for a slow client
    with pytest.raises(asyncio.CancelledError):
        await producer
    assert released.done()
