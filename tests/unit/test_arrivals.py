"""Requests that arrive together open their streams `PER_TURN` a loop turn, in arrival order; a lone request, or
a burst the size of c=32, never waits."""

from __future__ import annotations

import asyncio
from typing import cast

import pytest
from litestar.types import ASGIApp, Message, Receive, ReceiveMessage, Scope, Send

from app.arrivals import PER_TURN, Arrivals
from app.hot_routes import HotRoutes
from app.incoming import Incoming

pytestmark = pytest.mark.anyio


async def test_a_lone_request_and_a_burst_of_32_go_on_at_once() -> None:
    arrivals = Arrivals()
    assert arrivals.turn() is None
    await asyncio.sleep(0)
    assert all(arrivals.turn() is None for _ in range(32))


async def test_a_burst_goes_through_a_turns_worth_at_a_time_in_arrival_order() -> None:
    arrivals = Arrivals()
    turns = [arrivals.turn() for _ in range(PER_TURN * 3 + 5)]
    assert all(t is None for t in turns[:PER_TURN])
    waiting = [t for t in turns[PER_TURN:] if t is not None]
    assert len(waiting) == PER_TURN * 2 + 5
    released: list[list[int]] = []
    for _ in range(4):  # each loop turn lets the next PER_TURN through, the earliest first
        await asyncio.sleep(0)
        released.append([i for i, w in enumerate(waiting) if w.done()])
    assert released == [
        list(range(PER_TURN)),
        list(range(PER_TURN * 2)),
        list(range(PER_TURN * 2 + 5)),
        list(range(PER_TURN * 2 + 5)),
    ]


async def test_a_request_that_left_while_waiting_takes_no_place() -> None:
    arrivals = Arrivals()
    for _ in range(PER_TURN):
        assert arrivals.turn() is None
    left, *staying = (arrivals.turn() for _ in range(PER_TURN + 1))
    assert left is not None
    left.cancel()
    await asyncio.sleep(0)
    assert all(w is not None and w.done() for w in staying)  # all PER_TURN of them in one turn


async def test_a_request_arriving_while_others_wait_queues_behind_them() -> None:
    arrivals = Arrivals()
    for _ in range(PER_TURN):
        arrivals.turn()
    waiting = [arrivals.turn() for _ in range(PER_TURN * 2)]
    await asyncio.sleep(0)  # the first PER_TURN of them let through
    late = arrivals.turn()
    assert late is not None  # never ahead of those still waiting
    await asyncio.sleep(0)
    assert all(w is not None and w.done() for w in waiting)
    assert not late.done()
    await asyncio.sleep(0)
    assert late.done()


async def test_the_stream_routes_take_their_turns() -> None:
    """The hot routes open their streams through the gate: of a burst, the first turn starts `PER_TURN`."""
    started: list[int] = []

    async def route(request: Incoming) -> ASGIApp:
        started.append(len(started))

        async def reply(scope: Scope, receive: Receive, send: Send) -> None:
            return None

        return reply

    async def litestar(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError("a stream route went to Litestar")

    async def receive() -> ReceiveMessage:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        return None

    routes = HotRoutes(litestar, {"/v1/chat/completions": route}, None)
    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "state": {}}

    async def request() -> None:  # as uvicorn calls the app: from the request's own task
        await routes(cast(Scope, dict(scope)), receive, send)

    requests = [asyncio.ensure_future(request()) for _ in range(PER_TURN + 10)]
    await asyncio.sleep(0)  # the requests' first step: PER_TURN go on, 10 wait
    assert len(started) == PER_TURN
    await asyncio.gather(*requests)
    assert len(started) == PER_TURN + 10
