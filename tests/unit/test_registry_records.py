"""The heartbeat's records are made a slice at a time, the loop running between slices: every stream still open
gets one, a stream that ends meanwhile gets none, and each recorded stream is known to be in the store."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from app.registry import RECORDS_PER_TURN, StopReason, StreamRecord, StreamRegistry, decode_record

pytestmark = pytest.mark.anyio


class _Open:
    def __init__(self, stream_id: str) -> None:
        self.stream_id = stream_id

    def record(self, replica: str) -> StreamRecord:
        return StreamRecord(
            id=self.stream_id, principal="key:k", model="m", provider=None, upstream_model=None, api="chat",
            replica=replica, started_at=0.0, first_token_at=None, tokens_out=0, state="starting", watchers=(),
        )  # fmt: skip

    def stop(self, reason: StopReason) -> bool:
        return False


async def test_records_of_thousands_let_the_loop_run_and_skip_streams_that_ended_meanwhile() -> None:
    registry = StreamRegistry("replica-a")
    count = RECORDS_PER_TURN * 3 + 7
    for i in range(count):
        registry.add(_Open(f"s{i:05d}"))
    last = f"s{count - 1:05d}"
    turns = 0

    async def elsewhere() -> None:  # another task of the loop: streams end while the records are made
        nonlocal turns
        turns += 1
        assert registry.discard(last) is False  # not recorded yet: nothing for its `finish` to remove
        assert registry.discard("s00000") is True  # recorded already: its `finish` removes it from the store
        turns += 1

    ending = asyncio.ensure_future(elsewhere())
    records = await registry.records()
    await ending
    assert turns == 2  # the loop ran while the records were made
    ids = [stream_id for stream_id, _ in records]
    assert ids == [f"s{i:05d}" for i in range(1, count - 1)]  # neither ended stream is written again
    assert all(decode_record(raw).id == stream_id for stream_id, raw in records)
    assert registry.discard("s00001") is True  # recorded: its `finish` removes it from the store
    assert msgspec.json.decode(records[0][1])["replica"] == "replica-a"
