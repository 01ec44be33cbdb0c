"""`LoopTurns`: a task that never suspends on its own still gives the loop a turn."""

from __future__ import annotations

import asyncio
import time

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


async def test_requests_started_together_leave_the_loop_turns_between_them() -> None:
    """Fifty requests that each work 1 ms without suspending, all started in one loop iteration: past 5 ms the
    rest wait for the next iteration, so a callback queued behind them (a running stream's next token) runs
    long before the last of them has worked."""
    loop = asyncio.get_running_loop()
    turns = LoopTurns(loop)
    finished: list[int] = []
    finished_when_other_ran: list[int] = []

    async def request(i: int) -> None:
        await turns.admit()
        until = time.perf_counter() + 0.001
        while time.perf_counter() < until:
            pass
        finished.append(i)

    tasks = [asyncio.ensure_future(request(i)) for i in range(50)]
    loop.call_soon(lambda: finished_when_other_ran.append(len(finished)))
    async with asyncio.timeout(10):
        await asyncio.gather(*tasks)
    assert sorted(finished) == list(range(50))
    assert finished_when_other_ran[0] < 25, f"{finished_when_other_ran[0]} requests ran before the loop turned"
