"""`read_body`'s deadline: a body that does not come in time is a `RequestTimeout`; a task cancelled from outside
while it waits (the client left, a shutdown) stays cancelled, and a body read in time leaves no timer behind."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from app.errors import RequestTimeout
from app.incoming import HotRequest
from app.json_body import read_body

pytestmark = pytest.mark.anyio

SCOPE: Any = {"type": "http", "method": "POST", "path": "/chat/stream", "headers": [], "state": {}}


def _request(receive: Any) -> HotRequest:
    return HotRequest(cast(Any, SCOPE), receive)


async def _never() -> Any:
    await asyncio.Event().wait()


async def test_a_body_that_does_not_come_in_time_is_a_request_timeout() -> None:
    with pytest.raises(RequestTimeout):
        await read_body(_request(_never), max_bytes=100, seconds=0.05)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_task_cancelled_from_outside_stays_cancelled() -> None:
    reading = asyncio.create_task(read_body(_request(_never), max_bytes=100, seconds=30))
    await asyncio.sleep(0)
    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading


async def test_a_body_read_in_time_leaves_no_timer() -> None:
    async def whole() -> Any:
        return {"type": "http.request", "body": b'{"a": 1}', "more_body": False}

    scheduled = cast(Any, asyncio.get_running_loop())._scheduled  # asyncio's own loop: its timer heap

    def live() -> int:
        return sum(not handle.cancelled() for handle in scheduled)

    before = live()
    assert await read_body(_request(whole), max_bytes=100, seconds=30) == b'{"a": 1}'
    assert live() == before  # a timer left armed would cancel this task 30 s later, mid-stream
