"""Sessions are not free to mint: logins per address are limited whatever the request limit, and the in-process
store holds a bounded number, forgetting expired ones."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.session_store import BoundedMemoryStore
from app.settings import SessionSettings
from tests.support.servers import proxy_settings, running_proxy

pytestmark = pytest.mark.anyio


def settings_with(**sessions: object) -> object:
    settings = proxy_settings(limits={"requests_per_minute": 0, "concurrent_streams": 0})
    return settings.model_copy(update={"sessions": SessionSettings.model_validate(sessions)})


async def test_anonymous_logins_are_limited_per_address_with_the_request_limit_off() -> None:
    with running_proxy(settings_with(logins_per_minute=5)) as base:  # type: ignore[arg-type]
        async with httpx.AsyncClient(timeout=10) as client:
            statuses = [(await client.post(f"{base}/auth/session")).status_code for _ in range(8)]
            refused = await client.post(f"{base}/auth/session")
    assert statuses == [200] * 5 + [429] * 3
    assert refused.json()["error"]["code"] == "rate_limited"
    assert "requests per minute (requests_per_minute: 5)" not in refused.text
    assert int(refused.headers["retry-after"]) >= 1


async def test_a_full_session_store_refuses_new_logins() -> None:
    with running_proxy(settings_with(max_sessions=3, logins_per_minute=100)) as base:  # type: ignore[arg-type]
        async with httpx.AsyncClient(timeout=10) as client:
            statuses = []
            for _ in range(5):
                client.cookies.clear()
                statuses.append((await client.post(f"{base}/auth/session")).status_code)
            refused = await client.post(f"{base}/auth/session")
    assert statuses == [200, 200, 200, 429, 429]
    assert refused.json()["error"]["message"] == "too many open sessions; try again later"


async def test_expired_sessions_make_room_again() -> None:
    store = BoundedMemoryStore(max_sessions=2)
    await store.set("a", b"x", expires_in=1)
    await store.set("b", b"x", expires_in=1)
    assert not await store.has_room()
    await asyncio.sleep(1.05)  # the passing of time is what is under test
    assert await store.has_room()
    assert store.size == 0
