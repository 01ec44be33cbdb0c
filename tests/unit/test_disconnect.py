"""`DisconnectWatch` under any ASGI server: the `receive()` task when the server offers no callback."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from app.disconnect import NOTIFY_DISCONNECT, DisconnectWatch

pytestmark = pytest.mark.anyio


async def test_without_the_servers_callback_a_disconnect_from_receive_is_reported() -> None:
    messages: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    left = asyncio.Event()
    watch = DisconnectWatch({"type": "http"}, messages.get, left.set)  # type: ignore[arg-type]
    await messages.put({"type": "http.request", "body": b"", "more_body": False})
    await messages.put({"type": "http.disconnect"})
    async with asyncio.timeout(2):
        await left.wait()
    watch.close()


async def test_with_the_servers_callback_no_task_reads_receive_and_close_takes_the_callback_back() -> None:
    registered: list[tuple[Any, bool]] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("receive() is not read when the server reports the loss itself")

    scope = {"type": "http", NOTIFY_DISCONNECT: lambda callback, wanted: registered.append((callback, wanted))}
    calls: list[str] = []
    watch = DisconnectWatch(scope, receive, lambda: calls.append("left"))  # type: ignore[arg-type]
    await asyncio.sleep(0)  # a task, had one been made, would run here
    watch.close()
    assert [wanted for _, wanted in registered] == [True, False]
    assert registered[0][0] is registered[1][0]  # what is taken back is the very callback given
    registered[0][0]()  # a loss reported after close(), as one queued before it would be
    assert calls == []
