"""`Deadlines`: coarse deadlines on one loop timer, met never early, and never once removed."""

from __future__ import annotations

import asyncio
import logging

import pytest

from app.deadlines import Deadlines

pytestmark = pytest.mark.anyio


@pytest.fixture(params=[pytest.param({}, id="asyncio"), pytest.param({"use_uvloop": True}, id="uvloop")])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, bool]]:
    """Both loops: uvloop's clock counts whole milliseconds, asyncio's does not."""
    return "asyncio", request.param


class Item:
    def __init__(self, name: str, record: list[tuple[str, float]], again: Deadlines | None = None) -> None:
        self.name = name
        self.record = record
        self.again = again  # add itself once more, a tick later, when its deadline passes
        self.passed = asyncio.Event()

    def deadline_passed(self) -> None:
        loop = asyncio.get_running_loop()
        self.record.append((self.name, loop.time()))
        if self.again is not None:
            self.again.add(loop.time() + 0.01, self)
            self.again = None
        else:
            self.passed.set()


async def test_a_deadline_is_met_and_never_early() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(resolution=0.05)
    record: list[tuple[str, float]] = []
    when = loop.time() + 0.12
    item = Item("a", record)
    deadlines.add(when, item)
    async with asyncio.timeout(5):
        await item.passed.wait()
    assert len(record) == 1
    assert record[0][1] >= when


async def test_a_removed_deadline_never_passes() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(resolution=0.05)
    record: list[tuple[str, float]] = []
    kept, removed = Item("kept", record), Item("removed", record)
    when = loop.time() + 0.05
    deadlines.add(when, kept)
    deadlines.remove(deadlines.add(when, removed), removed)  # same tick: it would have passed with `kept`
    async with asyncio.timeout(5):
        await kept.passed.wait()
    assert [name for name, _ in record] == ["kept"]


async def test_an_earlier_deadline_added_later_is_not_held_behind_the_first() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(resolution=0.05)
    record: list[tuple[str, float]] = []
    late, early = Item("late", record), Item("early", record)
    late_at = loop.time() + 3.0
    deadlines.add(late_at, late)
    deadlines.add(loop.time() + 0.05, early)
    async with asyncio.timeout(5):
        await early.passed.wait()
    assert record[0][0] == "early"
    assert record[0][1] < late_at, "the early deadline waited for the timer armed for the late one"


async def test_an_item_adds_itself_again_from_its_callback() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(resolution=0.05)
    record: list[tuple[str, float]] = []
    item = Item("again", record, again=deadlines)
    deadlines.add(loop.time() + 0.05, item)
    async with asyncio.timeout(5):
        await item.passed.wait()
    assert [name for name, _ in record] == ["again", "again"]
    assert record[1][1] > record[0][1]


class Remover:
    def __init__(self, deadlines: Deadlines, victim: Item) -> None:
        self.deadlines = deadlines
        self.victim = victim
        self.tick = 0

    def deadline_passed(self) -> None:
        self.deadlines.remove(self.tick, self.victim)


async def test_an_item_removed_by_another_of_its_tick_is_not_called() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(resolution=0.05)
    record: list[tuple[str, float]] = []
    victim, witness = Item("victim", record), Item("witness", record)
    when = loop.time() + 0.05
    remover = Remover(deadlines, victim)
    remover.tick = deadlines.add(when, remover)  # first in its bucket: called before the victim
    deadlines.add(when, victim)
    deadlines.add(when + 0.1, witness)  # a later tick: once it has passed, the victim's had too
    async with asyncio.timeout(5):
        await witness.passed.wait()
    assert [name for name, _ in record] == ["witness"]


class Failing:
    def deadline_passed(self) -> None:
        raise RuntimeError("boom")


async def test_a_failing_callback_is_logged_and_the_others_still_run(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(resolution=0.05)
    record: list[tuple[str, float]] = []
    item = Item("after", record)
    when = loop.time() + 0.05
    deadlines.add(when, Failing())
    deadlines.add(when, item)
    with caplog.at_level(logging.ERROR, logger="tokenrelay.deadlines"):
        async with asyncio.timeout(5):
            await item.passed.wait()
    assert [name for name, _ in record] == ["after"]
    assert any("deadline's callback failed" in r.getMessage() for r in caplog.records)
