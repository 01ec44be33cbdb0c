"""`LazyEvent` keeps `asyncio.Event`'s behaviour, and a keep-alive has at most one ping in flight."""

from __future__ import annotations

import asyncio

import pytest
from litestar.types import Message

from app.connection_state import LazyEvent
from app.keepalive import Pings

pytestmark = pytest.mark.anyio


async def test_a_set_event_does_not_wait() -> None:
    event = LazyEvent()
    event.set()
    async with asyncio.timeout(1):
        assert await event.wait() is True
    assert event.is_set()


async def test_every_waiter_wakes_and_a_cleared_event_waits_again() -> None:
    event = LazyEvent()
    waiters = [asyncio.ensure_future(event.wait()) for _ in range(3)]
    await asyncio.sleep(0)  # let them block
    assert not any(w.done() for w in waiters)
    event.set()
    async with asyncio.timeout(1):
        assert await asyncio.gather(*waiters) == [True, True, True]
    event.clear()
    again = asyncio.ensure_future(event.wait())
    await asyncio.sleep(0)
    assert not again.done()
    event.set()
    async with asyncio.timeout(1):
        assert await again


async def test_a_cancelled_waiter_leaves_the_others_waiting() -> None:
    event = LazyEvent()
    gone, kept = asyncio.ensure_future(event.wait()), asyncio.ensure_future(event.wait())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert not kept.done()
    event.set()
    async with asyncio.timeout(1):
        assert await kept


async def test_a_keepalive_has_one_ping_in_flight_and_stop_cancels_it() -> None:
    """A client that stops reading blocks the ping's send: later intervals add no second ping behind it."""
    released = asyncio.Event()
    sends: list[Message] = []
    first_send = asyncio.Event()

    async def blocked_send(message: Message) -> None:
        sends.append(message)
        first_send.set()
        await released.wait()

    keepalive = Pings(0.05).keepalive(blocked_send, b": ping\n\n")
    keepalive.start()
    async with asyncio.timeout(5):
        await first_send.wait()
    # Three more intervals of silence, each a deadline that finds the first ping still waiting.
    await asyncio.sleep(0.2)
    assert len(sends) == 1
    keepalive.stop()
    await asyncio.sleep(0)
    released.set()
    await asyncio.sleep(0.1)
    assert len(sends) == 1, "a ping was sent after stop()"
