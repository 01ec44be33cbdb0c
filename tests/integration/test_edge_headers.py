"""Headers every response carries: security headers, the correlation id, CORS — on streams, errors, unrouted paths."""

from __future__ import annotations

from collections.abc import Iterator

import anyio
import httpx
import pytest

from app.settings import ConfigError, CorsSettings, parse_settings
from tests.support.servers import proxy_settings, raw_exchange, running_proxy

pytestmark = pytest.mark.anyio

SECURITY_HEADERS = {
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    "strict-transport-security": "max-age=63072000; includeSubDomains",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
}
ORIGIN = "https://chat.example"


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    settings = proxy_settings(max_body_bytes=512)
    cors = CorsSettings(allow_origins=(ORIGIN,), allow_credentials=True)
    settings = settings.model_copy(update={"security": settings.security.model_copy(update={"cors": cors})})
    with running_proxy(settings) as url:
        yield url


REQUESTS = {
    "stream 200": ("POST", "/chat/stream", {"prompt": "hi"}, 200),
    "JSON 200": ("GET", "/v1/models", None, 200),
    "404": ("GET", "/nowhere", None, 404),
    "405": ("DELETE", "/chat/stream", None, 405),
    "413": ("POST", "/chat/stream", {"prompt": "x" * 1024}, 413),
    "422": ("POST", "/chat/stream", {"prompt": ""}, 422),
}


@pytest.mark.parametrize("case", list(REQUESTS))
async def test_security_headers_and_request_id_on_every_response(base: str, case: str) -> None:
    method, path, body, status = REQUESTS[case]
    headers = {"Accept-Encoding": "gzip, br"}
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.request(method, f"{base}{path}", json=body, headers=headers)
    assert response.status_code == status
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    assert len(response.headers["x-request-id"]) == 32
    assert "content-encoding" not in response.headers
    assert "server" not in response.headers  # no advertising of what runs here
    if case == "stream 200":
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"


@pytest.mark.parametrize("header", ["X-Request-ID", "X-Correlation-ID"])
async def test_a_valid_incoming_id_is_echoed(base: str, header: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        missing = await client.get(f"{base}/nowhere", headers={header: "trace:abc-123.4_5"})
        stream = await client.post(f"{base}/chat/stream", json={"prompt": "hi"}, headers={header: "trace-9"})
    assert missing.headers["x-request-id"] == "trace:abc-123.4_5"
    assert missing.json()["error"]["request_id"] == "trace:abc-123.4_5"
    assert stream.headers["x-request-id"] == "trace-9"
    assert b'"request_id":"trace-9"' in stream.content


@pytest.mark.parametrize("bad", ["x" * 129, "has space", "semi;colon", "<script>", "caf\u00e9", "tab\there"], ids=repr)
async def test_an_invalid_incoming_id_is_replaced(base: str, bad: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{base}/nowhere", headers={b"X-Request-ID": bad.encode("utf-8")})
    replaced = response.headers["x-request-id"]
    assert replaced != bad
    assert len(replaced) == 32
    assert int(replaced, 16) >= 0


async def test_cors_preflight_for_the_post_stream(base: str) -> None:
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type, x-api-key",
    }
    async with httpx.AsyncClient(timeout=10) as client:
        allowed = await client.options(f"{base}/chat/stream", headers=preflight)
        stranger = await client.options(f"{base}/chat/stream", headers={**preflight, "Origin": "https://evil.example"})
    assert allowed.status_code in (200, 204)
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert allowed.headers["access-control-allow-credentials"] == "true"
    assert "POST" in allowed.headers["access-control-allow-methods"]
    assert "access-control-allow-origin" not in stranger.headers


async def test_cors_headers_on_a_stream_expose_what_browser_code_reads(base: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{base}/chat/stream", json={"prompt": "hi"}, headers={"Origin": ORIGIN})
    assert response.headers["access-control-allow-origin"] == ORIGIN
    exposed = {h.strip() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {"x-request-id", "x-ratelimit-remaining", "retry-after"} <= exposed


@pytest.mark.parametrize("cookie", [False, True], ids=["no cookie", "cookie"])
async def test_the_hot_routes_carry_the_same_cors_headers_as_litestars_routes(base: str, cookie: bool) -> None:
    """The two POST stream routes are served outside Litestar (`app.hot_routes`); their CORS headers, on answers
    and on errors, must be the ones Litestar's CORS layer puts on every other route."""
    headers = {"Origin": ORIGIN, **({"Cookie": "unrelated=1"} if cookie else {})}
    async with httpx.AsyncClient(timeout=10) as client:
        routed = await client.get(f"{base}/v1/models", headers=headers)
        answers = [
            await client.post(f"{base}/chat/stream", json={"prompt": "hi"}, headers=headers),
            await client.post(f"{base}/chat/stream", json={"prompt": ""}, headers=headers),
            await client.post(f"{base}/v1/chat/completions", json={"model": "nope", "messages": []}, headers=headers),
        ]

    def cors(response: httpx.Response) -> dict[str, str]:
        return {k: v for k, v in response.headers.items() if k.startswith("access-control-") or k == "vary"}

    assert cors(routed)["access-control-allow-origin"] == ORIGIN
    assert [a.status_code for a in answers] == [200, 422, 422]
    for answer in answers:
        assert cors(answer) == cors(routed)


async def test_an_empty_origin_gets_the_same_cors_answer_on_both_kinds_of_route(base: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        routed = await client.get(f"{base}/v1/models", headers={"Origin": ""})
        hot = await client.post(f"{base}/chat/stream", json={"prompt": "hi"}, headers={"Origin": ""})
    assert routed.status_code == hot.status_code  # the access policy's answer to an origin it cannot match
    assert "access-control-allow-origin" not in routed.headers
    assert "access-control-allow-origin" not in hot.headers


@pytest.mark.parametrize(("method", "path"), [("POST", "/chat/stream"), ("POST", "/v1/chat/completions")])
async def test_a_malformed_host_is_a_400_on_the_hot_routes_too(base: str, method: str, path: str) -> None:
    port = int(base.rsplit(":", 1)[1])
    body = b'{"prompt": "hi"}'
    request = (
        f"{method} {path} HTTP/1.1\r\nhost: bad<host>\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body
    reply = await anyio.to_thread.run_sync(raw_exchange, port, request)
    head, _, answer = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert b'"invalid_request"' in answer


async def test_no_cors_unless_configured() -> None:
    with running_proxy(proxy_settings()) as url:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{url}/v1/models", headers={"Origin": ORIGIN})
    assert "access-control-allow-origin" not in response.headers


def test_wildcard_origin_with_credentials_is_refused() -> None:
    with pytest.raises(ConfigError, match="allow_credentials"):
        parse_settings("security:\n  cors:\n    allow_origins: ['*']\n    allow_credentials: true\n", {})


async def test_a_header_can_be_turned_off() -> None:
    """Plain-HTTP deployments behind no TLS terminator switch HSTS off in config.yaml."""
    configured = parse_settings("security:\n  headers:\n    strict_transport_security: ''\n", {})
    settings = proxy_settings().model_copy(update={"security": configured.security})
    with running_proxy(settings) as url:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.get(f"{url}/healthz")
    assert "strict-transport-security" not in response.headers
    assert response.headers["x-frame-options"] == "DENY"


async def test_security_headers_on_a_429() -> None:
    with running_proxy(proxy_settings(limits={"requests_per_minute": 1})) as url:
        async with httpx.AsyncClient(timeout=10) as client:
            await client.post(f"{url}/chat/stream", json={"prompt": "hi"})
            refused = await client.post(f"{url}/chat/stream", json={"prompt": "hi"})
    assert refused.status_code == 429
    for name, value in SECURITY_HEADERS.items():
        assert refused.headers.get(name) == value, name
    assert len(refused.headers["x-request-id"]) == 32
    assert refused.headers["x-ratelimit-remaining"] == "0"
