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
    registered: list[object] = []

    async def receive() -> dict[str, Any]:
        raise AssertionError("receive() is not read when the server reports the loss itself")

    scope = {"type": "http", NOTIFY_DISCONNECT: registered.append}
    watch = DisconnectWatch(scope, receive, lambda: None)  # type: ignore[arg-type]
    await asyncio.sleep(0)  # a task, had one been made, would run here
    watch.close()
    assert len(registered) == 2
    assert callable(registered[0])
    assert registered[1] is None
