"""Calls made in the same event-loop turn, sent together: 32 admissions arriving at once are two writes to Redis
(the first alone, the rest in one pipeline), not 32 queued behind one another on the pool.

The first call of a turn goes at once, alone: a lone request (the c=1 case) then waits for nothing but its round
trip, where waiting for the turn's end to see whether others join cost it two loop turns (20 µs each here). A
turn's batch is written at the next turn, after that turn's first call: admissions may reach Redis one turn out
of arrival order, which no limit can tell."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """`await coalescer(item)` is sent alone if it is the turn's first, else joins the batch of the rest of the
    turn; `run(items)` answers a batch, one result or exception per item, in order (an exception it raises fails
    every item of the batch)."""

    def __init__(self, run: Callable[[list[T]], Awaitable[list[R | BaseException]]]) -> None:
        self._run = run
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._scheduled = False  # a task is made that has yet to take the pending batch
        self._sending: set[asyncio.Task[None]] = set()
        self._turn_taken = False  # a call of this loop turn went alone: the next ones wait for the batch

    async def __call__(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        if not self._turn_taken:
            self._turn_taken = True
            loop.call_soon(self._end_turn)  # runs after every callback already due in this turn
            (result,) = await self._answers([item])
            if isinstance(result, BaseException):
                raise result
            return result
        future: asyncio.Future[R] = loop.create_future()
        self._pending.append((item, future))
        if not self._scheduled:
            self._scheduled = True
            # The task's first step runs once this turn's callbacks have, so it takes the whole turn's batch: one
            # loop turn before the round trip, not two as with a callback that then made the task.
            task = loop.create_task(self._send())
            self._sending.add(task)  # a reference, or the task could be collected mid-flight
            task.add_done_callback(self._sending.discard)
        return await future

    def _end_turn(self) -> None:
        self._turn_taken = False

    async def _send(self) -> None:
        batch, self._pending, self._scheduled = self._pending, [], False
        batch = [(item, future) for item, future in batch if not future.done()]  # callers that left: not sent
        if not batch:
            return
        outcome: list[R | BaseException]
        try:
            outcome = await self._answers([item for item, _ in batch])
        except Exception as exc:  # the whole batch failed: each caller gets the failure
            outcome = [exc for _ in batch]
        except BaseException:  # cancelled: no caller may wait forever
            abandoned: list[R | BaseException] = [RuntimeError("the batch was abandoned") for _ in batch]
            _settle(batch, abandoned)
            raise
        _settle(batch, outcome)

    async def _answers(self, items: list[T]) -> list[R | BaseException]:
        results = await self._run(items)
        if len(results) != len(items):
            raise RuntimeError(f"a batch of {len(items)} got {len(results)} results")
        return results


def _settle(batch: list[tuple[T, asyncio.Future[R]]], outcome: list[R | BaseException]) -> None:
    for (_, future), result in zip(batch, outcome, strict=True):
        if future.done():  # its caller left (cancelled) meanwhile
            continue
        if isinstance(result, BaseException):
            future.set_exception(result)
        else:
            future.set_result(result)
