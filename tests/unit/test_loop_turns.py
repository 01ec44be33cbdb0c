"""`LoopTurns`: a task that never suspends on its own still gives the loop a turn."""

from __future__ import annotations

import asyncio

import pytest

from app.loop_turns import LoopTurns

pytestmark = pytest.mark.anyio


async def test_a_task_that_never_suspends_still_lets_other_callbacks_run() -> None:
    loop = asyncio.get_running_loop()
    turns = LoopTurns(loop)
    others_ran = asyncio.Event()
    loop.call_soon(others_ran.set)
    steps = 0
    while not others_ran.is_set() and steps < 10_000_000:  # bounded: without turns this would spin to the end
        steps += 1
        await turns.after_step()
    assert others_ran.is_set()
    assert steps < 10_000_000


async def test_a_step_after_the_loop_turned_does_not_yield_again() -> None:
    loop = asyncio.get_running_loop()
    turns = LoopTurns(loop)
    await turns.after_step()
    await asyncio.sleep(0.01)  # suspended: the loop turned, and the callback noted it
    order: list[str] = []
    loop.call_soon(order.append, "other")
    await turns.after_step()  # no extra turn: the callback above has not run yet
    order.append("step")
    await asyncio.sleep(0)
    assert order == ["step", "other"]
