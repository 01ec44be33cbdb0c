"""API keys and browser sessions over real HTTP."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator

import httpx
import pytest

from app.settings import Settings, StateSettings
from tests.support.logs import RecordCollector
from tests.support.redis_server import RedisServer
from tests.support.servers import proxy_settings, running_proxy

pytestmark = pytest.mark.anyio

PLAIN = "sk-team-a-0123456789abcdef"
HASHED = "sk-ci-fedcba9876543210abcd"
LIMITED = "sk-limited-00000000000000"


def auth_settings(secure_cookie: bool = False) -> Settings:
    base = proxy_settings()
    return Settings.model_validate(
        {
            **base.model_dump(mode="python", exclude={"auth", "sessions", "providers", "models"}),
            "providers": {"echo": {"type": "echo", "tokens_per_second": 0, "first_token_delay_ms": 0}},
            "models": {"echo": {"provider": "echo", "model": "echo"}, "other": {"provider": "echo", "model": "x"}},
            "auth": {
                "keys": [
                    {"id": "team-a", "key": PLAIN},
                    {"id": "ci", "sha256": hashlib.sha256(HASHED.encode()).hexdigest(), "models": ["echo"]},
                    {"id": "limited", "key": LIMITED, "limits": {"requests_per_minute": 1}},
                ]
            },
            "sessions": {"secure": secure_cookie},
        }
    )


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_proxy(auth_settings()) as url:
        yield url


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/chat/stream", {"prompt": "hi"}),
        ("GET", "/chat/stream?prompt=hi", None),
        ("POST", "/v1/chat/completions", {"model": "echo", "messages": [{"role": "user", "content": "hi"}]}),
        ("GET", "/v1/models", None),
    ],
)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong-key-000000000"}, {"X-API-Key": "nope"}])
async def test_missing_or_wrong_key_is_401_json(
    base: str, method: str, path: str, body: object, headers: dict[str, str]
) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.request(method, f"{base}{path}", json=body, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"]["code"] == "unauthorized"
    assert response.json()["error"]["type"] == "authentication_error"


@pytest.mark.parametrize(
    "headers", [{"Authorization": f"Bearer {PLAIN}"}, {"X-API-Key": PLAIN}, {"authorization": f"bearer {HASHED}"}]
)
async def test_valid_keys_stream(base: str, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{base}/chat/stream", json={"prompt": "hi"}, headers=headers)
    assert response.status_code == 200
    assert b"event: done" in response.content


async def test_health_needs_no_key(base: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"{base}/healthz")).status_code == 200


async def test_a_key_limited_to_some_models(base: str) -> None:
    headers = {"X-API-Key": HASHED}
    async with httpx.AsyncClient(timeout=10) as client:
        refused = await client.post(f"{base}/chat/stream", json={"prompt": "hi", "model": "other"}, headers=headers)
        models = await client.get(f"{base}/v1/models", headers=headers)
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "forbidden"
    assert [m["id"] for m in models.json()["data"]] == ["echo"]


async def test_per_key_limits(base: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        first = await client.post(f"{base}/chat/stream", json={"prompt": "hi"}, headers={"X-API-Key": LIMITED})
        second = await client.post(f"{base}/chat/stream", json={"prompt": "hi"}, headers={"X-API-Key": LIMITED})
        other = await client.post(f"{base}/chat/stream", json={"prompt": "hi"}, headers={"X-API-Key": PLAIN})
    assert (first.status_code, second.status_code, other.status_code) == (200, 429, 200)
    assert second.headers["x-ratelimit-limit"] == "1"


async def test_keys_never_reach_the_logs(logs: RecordCollector) -> None:
    with running_proxy(auth_settings()) as url:
        async with httpx.AsyncClient(timeout=10) as client:
            await client.post(f"{url}/chat/stream", json={"prompt": "hi"}, headers={"X-API-Key": PLAIN})
            await client.post(f"{url}/chat/stream", json={"prompt": "hi"}, headers={"X-API-Key": "sk-guess-123"})
            await client.post(f"{url}/auth/session", json={"api_key": HASHED})
            await client.post(f"{url}/v1/chat/completions", json={"messages": []}, headers={"X-API-Key": PLAIN})
    text = "\n".join(logs.messages()) + "\n".join(str(r.args) for r in logs.records)
    assert logs.records, "nothing was logged: the scan would prove nothing"
    for secret in (PLAIN, HASHED, LIMITED, "sk-guess-123"):
        assert secret not in text


async def test_eventsource_authenticates_with_the_session_cookie(base: str) -> None:
    async with httpx.AsyncClient(timeout=10) as browser:
        refused = await browser.post(f"{base}/auth/session", json={"api_key": "sk-wrong-key-000000000"})
        assert refused.status_code == 401
        # Whatever cookie the refusal carried, it opens nothing.
        assert (await browser.get(f"{base}/chat/stream", params={"prompt": "hi"})).status_code == 401

        login = await browser.post(f"{base}/auth/session", json={"api_key": PLAIN})
        assert login.status_code == 200
        assert login.json()["key_id"] == "team-a"
        cookie = login.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=lax" in cookie
        assert "secure" not in cookie

        # What EventSource does: a GET with no custom header, the cookie sent by the browser.
        stream = await browser.get(f"{base}/chat/stream", params={"prompt": "hi"})
        assert stream.status_code == 200
        assert stream.headers["content-type"].startswith("text/event-stream")
        assert "set-cookie" not in stream.headers, "a stream must not write the session"

        await browser.delete(f"{base}/auth/session")
        after_logout = await browser.get(f"{base}/chat/stream", params={"prompt": "hi"})
        assert after_logout.status_code == 401

    async with httpx.AsyncClient(timeout=10) as stranger:
        assert (await stranger.get(f"{base}/chat/stream", params={"prompt": "hi"})).status_code == 401


async def test_the_hot_routes_authenticate_with_the_session_cookie(base: str) -> None:
    """A page's `fetch` POSTs with its session cookie and no key: the routes served before Litestar read it too."""
    chat = {"model": "echo", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    async with httpx.AsyncClient(timeout=10) as browser:
        assert (await browser.post(f"{base}/auth/session", json={"api_key": PLAIN})).status_code == 200
        stream = await browser.post(f"{base}/chat/stream", json={"prompt": "hi"})
        completion = await browser.post(f"{base}/v1/chat/completions", json=chat)
        assert (stream.status_code, completion.status_code) == (200, 200)
        assert "event: done" in stream.text
        assert "data: [DONE]" in completion.text
        await browser.delete(f"{base}/auth/session")
        assert (await browser.post(f"{base}/chat/stream", json={"prompt": "hi"})).status_code == 401
        assert (await browser.post(f"{base}/v1/chat/completions", json=chat)).status_code == 401


async def test_secure_cookie_when_configured() -> None:
    with running_proxy(auth_settings(secure_cookie=True)) as url:
        async with httpx.AsyncClient(timeout=10) as client:
            login = await client.post(f"{url}/auth/session", headers={"Authorization": f"Bearer {PLAIN}"})
    assert "secure" in login.headers["set-cookie"].lower()


async def test_a_session_opened_on_one_replica_works_on_another(redis_server: RedisServer) -> None:
    """Two replicas sharing Redis: the browser logs in through one and streams through the other."""
    prefix = f"sess-{uuid.uuid4().hex}:"
    settings = auth_settings().model_copy(
        update={"state": StateSettings(redis_url=redis_server.url, key_prefix=prefix)}
    )
    with running_proxy(settings) as replica_a, running_proxy(settings) as replica_b:
        async with httpx.AsyncClient(timeout=10) as browser:
            login = await browser.post(f"{replica_a}/auth/session", json={"api_key": PLAIN})
            assert login.status_code == 200
            # Cookies belong to the host, not the port: the browser sends this one to replica B as well.
            stream = await browser.get(f"{replica_b}/chat/stream", params={"prompt": "hi"})
    assert stream.status_code == 200
    assert b"event: done" in stream.content
