"""Closed by default: protected mode, the Origin check, time limits on slow clients, 401s that say how to log in,
and a logout that really ends the cookie."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import anyio
import httpx
import pytest

from app.errors import Forbidden, error_body
from app.settings import Settings
from bench.fake_upstream import FakeUpstream
from middleware.access import PROTECTED_MODE_MESSAGE, AccessPolicyMiddleware
from tests.support.servers import proxy_settings, raw_exchange, running_proxy

pytestmark = pytest.mark.anyio

KEY = "access-test-key-0123456789"


def settings_with(upstream: FakeUpstream | None = None, **sections: Any) -> Settings:
    data: dict[str, Any] = proxy_settings(upstream, "gen?n=3").model_dump(mode="python")
    for name, value in sections.items():
        data[name] = {**data.get(name, {}), **value} if isinstance(value, dict) else value
    return Settings.model_validate(data)


@pytest.fixture(scope="module")
def protected(upstream: FakeUpstream) -> Iterator[str]:
    with running_proxy(settings_with(upstream)) as base:
        yield base


@pytest.mark.parametrize(
    "forwarded",
    [
        {"x-forwarded-for": "203.0.113.7"},
        {"x-forwarded-for": "127.0.0.1, 198.51.100.2"},
        {"forwarded": "for=198.51.100.2;proto=https"},
        {"forwarded": 'for="[2001:db8::1]:443"'},
        {"x-real-ip": "198.51.100.2"},
    ],
)
async def test_protected_mode_refuses_clients_relayed_from_beyond_loopback(
    protected: str, upstream: FakeUpstream, forwarded: dict[str, str]
) -> None:
    """A local reverse proxy relaying the internet is not a loopback client."""
    before = len(upstream.records)
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{protected}/chat/stream", json={"model": "gen?n=3", "prompt": "hi"}, headers=forwarded
        )
    assert response.status_code == 403
    error = response.json()["error"]
    assert "auth.keys" in error["message"]
    assert "auth.open" in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert len(upstream.records) == before


async def test_protected_mode_serves_loopback_clients_and_health_checks(protected: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.post(f"{protected}/chat/stream", json={"prompt": "hi"})).status_code == 200
        relayed_locally = await client.post(
            f"{protected}/chat/stream", json={"prompt": "hi"}, headers={"x-forwarded-for": "127.0.0.1"}
        )
        assert relayed_locally.status_code == 200
        probe = await client.get(f"{protected}/healthz", headers={"x-forwarded-for": "10.1.2.3"})
        assert probe.status_code == 200  # a load balancer's probe comes from beyond loopback


async def test_protected_mode_judges_the_peer_address() -> None:
    """The TCP peer itself (here a real scope as uvicorn builds it, from an address this machine cannot dial)."""
    sent: list[dict[str, Any]] = []
    reached: list[bool] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        reached.append(True)

    async def send(message: Any) -> None:
        sent.append(message)

    async def receive() -> Any:
        return {"type": "http.request", "body": b"", "more_body": False}

    guard = AccessPolicyMiddleware(app, loopback_only=True, allowed_origins=(), trusted_proxies=())
    for peer in ("203.0.113.9", "::ffff:198.51.100.4", "10.0.0.2"):
        await guard(_scope(peer), receive, send)
    for peer in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        await guard(_scope(peer), receive, send)
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [403, 403, 403]
    assert len(reached) == 4
    assert json.loads(sent[1]["body"])["error"]["message"] == PROTECTED_MODE_MESSAGE
    assert sent[1]["body"] == error_body(Forbidden(PROTECTED_MODE_MESSAGE), "unknown")


def _scope(peer: str) -> Any:
    return {"type": "http", "path": "/chat/stream", "headers": [], "client": (peer, 5555), "state": {}}


async def test_auth_open_serves_everyone(upstream: FakeUpstream) -> None:
    with running_proxy(settings_with(upstream, auth={"open": True})) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                f"{base}/chat/stream", json={"prompt": "hi"}, headers={"x-forwarded-for": "203.0.113.7"}
            )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("origin", "status"),
    [
        ("https://evil.example", 403),
        ("null", 403),
        ("http://127.0.0.1:1", 403),  # same host, another port: another origin
        ("https://chat.example", 200),  # listed in allow_origins
        ("SAME", 200),  # the proxy's own origin
    ],
)
async def test_a_foreign_origin_is_refused_before_any_upstream_work(
    upstream: FakeUpstream, origin: str, status: int
) -> None:
    settings = settings_with(upstream, security={"cors": {"allow_origins": ["https://chat.example"]}})
    with running_proxy(settings) as base:
        before = len(upstream.records)
        headers = {"origin": base if origin == "SAME" else origin}
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                f"{base}/chat/stream", json={"model": "gen?n=3", "prompt": "hi"}, headers=headers
            )
            login = await client.post(f"{base}/auth/session", headers=headers)
    assert response.status_code == status, response.text
    assert login.status_code == status  # a foreign page cannot log a browser in either
    if status == 403:
        assert "allow_origins" in response.json()["error"]["message"]
        assert len(upstream.records) == before, "the generation must not run for a refused origin"


async def test_cors_allows_delete_by_default() -> None:
    settings = settings_with(security={"cors": {"allow_origins": ["https://chat.example"]}})
    with running_proxy(settings) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            preflight = await client.options(
                f"{base}/auth/session",
                headers={"origin": "https://chat.example", "access-control-request-method": "DELETE"},
            )
    assert preflight.status_code in (200, 204)
    assert "DELETE" in preflight.headers["access-control-allow-methods"]


async def test_a_401_says_how_to_authenticate() -> None:
    settings = settings_with(auth={"keys": [{"id": "k", "key": KEY}]})
    with running_proxy(settings) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            missing = await client.post(f"{base}/chat/stream", json={"prompt": "hi"})
            wrong = await client.get(f"{base}/v1/models", headers={"authorization": "Bearer wrong-key-000000000000"})
    for response in (missing, wrong):
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith("Bearer")


async def test_logout_expires_the_cookie_now() -> None:
    """Regression: the logout cookie carried Max-Age=86400 beside an old Expires; browsers keep it for a day."""
    settings = settings_with(auth={"keys": [{"id": "k", "key": KEY}]})
    with running_proxy(settings) as base:
        async with httpx.AsyncClient(timeout=10) as browser:
            assert (await browser.post(f"{base}/auth/session", json={"api_key": KEY})).status_code == 200
            stale = dict(browser.cookies)
            logout = await browser.delete(f"{base}/auth/session")
            cookie = logout.headers["set-cookie"].lower()
        async with httpx.AsyncClient(timeout=10, cookies=stale) as replay:  # a browser that kept the old cookie
            replayed = await replay.get(f"{base}/chat/stream", params={"prompt": "hi"})
    assert logout.status_code == 204
    assert "max-age=0" in cookie
    assert "max-age=86400" not in cookie
    assert replayed.status_code == 401, "the server forgot the session too"


async def test_a_form_encoded_login_is_told_to_send_json() -> None:
    with running_proxy(settings_with()) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{base}/auth/session", data={"api_key": KEY})
    assert response.status_code == 415
    assert "JSON" in response.json()["error"]["message"]


async def test_a_stalled_body_is_cut_with_408() -> None:
    settings = settings_with(server={"body_timeout_seconds": 0.5})
    with running_proxy(settings) as base:
        port = int(base.rsplit(":", 1)[1])
        reply = await anyio.to_thread.run_sync(
            raw_exchange,
            port,
            b"POST /chat/stream HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{",
        )
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408")
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "request_timeout"


@pytest.mark.parametrize("sent", [b"", b"GET /chat/stream?prompt=hi HTTP/1.1\r\nhost: x\r\n"])
async def test_connections_that_never_finish_their_headers_are_closed(sent: bytes) -> None:
    settings = settings_with(server={"header_timeout_seconds": 0.5})
    with running_proxy(settings) as base:
        port = int(base.rsplit(":", 1)[1])
        started = time.monotonic()
        reply = await anyio.to_thread.run_sync(raw_exchange, port, sent)
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408")
    assert elapsed < 5, "closed by the server, not by the test's own timeout"


async def test_a_keep_alive_request_that_stalls_mid_headers_is_closed() -> None:
    settings = settings_with(server={"header_timeout_seconds": 0.5})
    with running_proxy(settings) as base:
        port = int(base.rsplit(":", 1)[1])
        reply = await anyio.to_thread.run_sync(
            raw_exchange, port, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\nGET /healthz HTTP/1.1\r\nhos"
        )
    assert reply.startswith(b"HTTP/1.1 200")
    assert reply.count(b"HTTP/1.1 408") == 1


async def test_an_idle_kept_alive_connection_is_not_cut_by_the_header_deadline() -> None:
    """The deadline runs from a request's first byte: idling between requests is the keep-alive timeout's business."""
    settings = settings_with(server={"header_timeout_seconds": 0.3, "keepalive_seconds": 5})
    with running_proxy(settings) as base:
        async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_connections=1)) as client:
            first = await client.get(f"{base}/healthz")
            await anyio.sleep(0.8)  # the idle time under test, well past the header deadline
            second = await client.get(f"{base}/healthz")
    assert (first.status_code, second.status_code) == (200, 200)
