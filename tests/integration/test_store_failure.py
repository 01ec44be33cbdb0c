"""When Redis goes away mid-service: fail_open keeps serving (deciding locally), fail_closed answers 503."""

from __future__ import annotations

import uuid

import httpx
import pytest

from tests.support.logs import RecordCollector
from tests.support.redis_server import RedisServer
from tests.support.servers import proxy_settings, running_proxy

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("policy", ["fail_open", "fail_closed"])
async def test_redis_stopped_mid_test(policy: str, logs: RecordCollector) -> None:
    redis = RedisServer().start()
    limits = {"requests_per_minute": 100, "concurrent_streams": 4, "on_backend_failure": policy}
    settings = proxy_settings(limits=limits, redis_url=redis.url)
    settings = settings.model_copy(
        update={"state": settings.state.model_copy(update={"key_prefix": f"f-{uuid.uuid4().hex}:"})}
    )
    try:
        with running_proxy(settings) as base:
            async with httpx.AsyncClient(timeout=10) as client:
                before = await client.post(f"{base}/chat/stream", json={"prompt": "hi"})
                redis.stop()
                after = await client.post(f"{base}/chat/stream", json={"prompt": "hi"})
    finally:
        redis.stop()
    assert before.status_code == 200
    if policy == "fail_open":
        assert after.status_code == 200
        assert b"event: done" in after.content
        assert logs.messages("deciding locally (fail_open)")
    else:
        assert after.status_code == 503
        assert after.headers["content-type"] == "application/json"
        assert after.headers["retry-after"] == "1"
        assert "rate limiting is unavailable" in after.json()["error"]["message"]
