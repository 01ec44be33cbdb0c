"""Routing: retries and fallbacks before the first delta are invisible; after it, never."""

from __future__ import annotations

import json
import socket
from typing import Any

import httpx
import pytest

from app.settings import Settings
from bench.fake_upstream import FakeUpstream
from tests.support.client import assert_well_formed, post_stream
from tests.support.servers import running_proxy

pytestmark = pytest.mark.anyio

USER = [{"role": "user", "content": "hi"}]
TEXT = "Hello! How can I help you today? 😀 中文\n\nline\r\nbreak"


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def routed(upstream: FakeUpstream, targets: list[dict[str, Any]], **routing: float) -> Settings:
    """One public model, `m`, over the given targets; providers `a` (the fake) and `down` (nothing listens)."""
    providers = {
        "a": {"type": "openai", "base_url": upstream.base_url},
        "b": {"type": "openai", "base_url": upstream.base_url},
        "down": {"type": "openai", "base_url": f"http://127.0.0.1:{closed_port()}/v1"},
    }
    return Settings.model_validate(
        {
            "providers": providers,
            "models": {"m": {"targets": targets}},
            "default_model": "m",
            "routing": {"backoff_initial_ms": 10, "backoff_max_ms": 20, **routing},
        }
    )


@pytest.mark.parametrize(
    ("first", "attempts_on_first"),
    [
        ({"provider": "down", "model": "unreachable"}, 0),
        ({"provider": "a", "model": "status?code=503"}, 2),
        ({"provider": "a", "model": "slow_headers?delay_ms=3000", "timeouts": {"first_byte": 0.2}}, 1),
        ({"provider": "a", "model": "error_first"}, 1),
    ],
    ids=["refused", "503", "no-first-byte", "error-before-first-delta"],
)
async def test_a_failing_first_target_is_invisible(
    upstream: FakeUpstream, first: dict[str, Any], attempts_on_first: int
) -> None:
    settings = routed(upstream, [first, {"provider": "b", "model": "text"}])
    before = len(upstream.records_for(first["model"]))
    with running_proxy(settings) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            result = await post_stream(client, base, {"messages": USER})
    assert result.status == 200
    assert_well_formed(result)
    assert result.kinds[-1] == "done"
    assert result.text() == TEXT
    assert result.headers["x-tokenrelay-provider"] == "b"
    assert result.headers["x-tokenrelay-model"] == "text"
    start = result.data(0)
    assert (start["provider"], start["upstream_model"], start["model"]) == ("b", "text", "m")
    assert len(upstream.records_for(first["model"])) - before == attempts_on_first


async def test_a_failure_after_tokens_is_never_retried(upstream: FakeUpstream) -> None:
    model = "cutoff?n=3&mode=abrupt&gap_ms=5"
    settings = routed(upstream, [{"provider": "a", "model": model}, {"provider": "b", "model": "gen?n=99"}])
    with running_proxy(settings) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            result = await post_stream(client, base, {"messages": USER})
    assert_well_formed(result)
    assert result.text() == " t0 t1 t2"
    assert result.kinds[-1] == "error"
    assert result.data(-1)["code"] == "upstream_error"
    assert upstream.records_for("gen?n=99") == []
    assert len(upstream.records_for(model)) == 1


async def test_retry_after_is_honoured_within_the_cap(upstream: FakeUpstream) -> None:
    model = "status?code=429&retry_after=1&waited=yes"
    settings = routed(upstream, [{"provider": "a", "model": model}], retry_after_cap_seconds=2)
    with running_proxy(settings) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{base}/chat/stream", json={"messages": USER})
    first, second = upstream.records_for(model)[-2:]
    assert second.started - first.started >= 1.0
    # The last target's 429 reaches the client as a 429, with the upstream's Retry-After.
    assert response.status_code == 429
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["code"] == "upstream_rate_limited"


async def test_retry_after_beyond_the_cap_moves_on_at_once(upstream: FakeUpstream) -> None:
    limited = "status?code=429&retry_after=30"
    settings = routed(
        upstream,
        [{"provider": "a", "model": limited}, {"provider": "b", "model": "text"}],
        retry_after_cap_seconds=2,
    )
    before = len(upstream.records_for(limited))
    with running_proxy(settings) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            result = await post_stream(client, base, {"messages": USER})
    assert result.text() == TEXT
    assert len(upstream.records_for(limited)) - before == 1


async def test_an_invalid_request_does_not_fall_back(upstream: FakeUpstream) -> None:
    settings = routed(upstream, [{"provider": "a", "model": "status?code=400"}, {"provider": "b", "model": "text"}])
    before = len(upstream.records_for("text"))
    with running_proxy(settings) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{base}/chat/stream", json={"messages": USER})
    assert response.status_code == 400
    assert len(upstream.records_for("text")) == before


async def test_openai_api_uses_the_same_routing(upstream: FakeUpstream) -> None:
    settings = routed(upstream, [{"provider": "down", "model": "text"}, {"provider": "b", "model": "text"}])
    with running_proxy(settings) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(f"{base}/v1/chat/completions", json={"model": "m", "messages": USER})
    assert response.status_code == 200
    assert response.headers["x-tokenrelay-provider"] == "b"
    assert json.loads(response.content)["choices"][0]["message"]["content"] == TEXT
