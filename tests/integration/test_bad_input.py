"""Malformed requests get a clear 4xx JSON error naming the field, with the request id; never a 500."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.servers import proxy_settings, running_proxy
from tests.support.whatwg_sse import parse

pytestmark = pytest.mark.anyio

LIMIT = 2048


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    with running_proxy(proxy_settings(max_body_bytes=LIMIT)) as url:
        yield url


def assert_error(response: httpx.Response, status: int, code: str, field: str | None = None) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code
    assert error["request_id"] == response.headers["x-request-id"]
    assert error["message"]
    if field is not None:
        assert error["field"] == field


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": "hi"}, "messages"),
        ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
        ({"messages": [{"role": "user"}]}, "messages.0.content"),
        ({"messages": [{"role": "user", "content": 5}]}, "messages.0.content"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": 5}, "prompt"),
        ({"prompt": "a", "messages": [{"role": "user", "content": "b"}]}, "messages"),
        ({"prompt": "a", "max_tokens": "many"}, "max_tokens"),
        ({"prompt": "a", "max_tokens": 0}, "max_tokens"),
        ({"prompt": "a", "temperature": 9}, "temperature"),
        ({"prompt": "a", "stop": ["1", "2", "3", "4", "5"]}, "body"),
        ({"prompt": "a", "promt": "typo"}, "promt"),
    ],
)
async def test_invalid_body_is_422_naming_the_field(base: str, body: dict[str, Any], field: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{base}/chat/stream", json=body)
    assert_error(response, 422, "invalid_request", field)


@pytest.mark.parametrize("raw", [b"{", b"not json", b"[1,2]", b'"prompt"', b"", b"\xff\xfe"])
async def test_body_that_is_not_a_json_object_is_422(base: str, raw: bytes) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{base}/chat/stream", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 422, "invalid_request", "body")


async def test_body_that_is_not_declared_json_is_415(base: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{base}/chat/stream", content=b'{"prompt":"x"}')
    assert_error(response, 415, "invalid_request", "content-type")


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({}, "messages"),
        ({"prompt": "x", "max_tokens": "abc"}, "max_tokens"),
        ({"prompt": "x", "n": "2"}, "n"),
    ],
)
async def test_invalid_query_is_422(base: str, params: dict[str, str], field: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(f"{base}/chat/stream", params=params)
    assert_error(response, 422, "invalid_request", field)


async def test_unknown_model_is_404(base: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{base}/chat/stream", json={"prompt": "x", "model": "gpt-9"})
        query = await client.get(f"{base}/chat/stream", params={"prompt": "x", "model": "gpt-9"})
    assert_error(response, 404, "model_not_found")
    assert_error(query, 404, "model_not_found")
    assert "gpt-9" in response.json()["error"]["message"]


async def test_body_over_the_limit_is_413_with_content_length(base: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{base}/chat/stream", json={"prompt": "x" * (LIMIT * 2)})
    assert_error(response, 413, "request_too_large")


async def test_body_over_the_limit_is_413_when_chunked(base: str) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"prompt": "'
        for _ in range(8):
            yield b"x" * 512
        yield b'"}'

    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{base}/chat/stream", content=chunks(), headers={"content-type": "application/json"}
        )
    assert "content-length" not in response.request.headers
    assert_error(response, 413, "request_too_large")


async def test_unknown_route_and_method_are_json(base: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        missing = await client.get(f"{base}/nowhere")
        wrong_method = await client.put(f"{base}/chat/stream", json={"prompt": "x"})
    assert_error(missing, 404, "not_found")
    assert_error(wrong_method, 405, "method_not_allowed")


def assert_no_proxy_fault(response: httpx.Response) -> None:
    """Never a 500, and never a 200 whose stream ends in an `internal` error (a 500 in disguise)."""
    assert response.status_code < 500, response.text
    if response.status_code != 200:
        assert response.json()["error"]["request_id"] == response.headers["x-request-id"]
        return
    if not response.headers["content-type"].startswith("text/event-stream"):
        return
    for event in parse(response.content).events:
        if event.data == "[DONE]":
            continue
        data = json.loads(event.data)
        error = data.get("error", data) if event.type in ("error", "message") else {}
        assert error.get("code") != "internal", event.data


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
_FIELDS = st.sampled_from(["messages", "prompt", "model", "max_tokens", "temperature", "top_p", "stop", "system"])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(_FIELDS, _JSON, max_size=4) | _JSON)
def test_no_body_yields_a_500(base: str, body: Any) -> None:
    with httpx.Client(timeout=10) as client:
        response = client.post(
            f"{base}/chat/stream", content=json.dumps(body), headers={"content-type": "application/json"}
        )
    assert_no_proxy_fault(response)


_OPENAI_FIELDS = st.sampled_from(
    ["messages", "model", "stream", "stream_options", "n", "max_tokens", "max_completion_tokens", "temperature",
     "top_p", "stop", "tools", "tool_choice", "seed", "user"]
)  # fmt: skip
_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "system", "tool", "robot"])},
    optional={"content": _JSON, "tool_calls": _JSON, "tool_call_id": _JSON, "name": _JSON},
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.dictionaries(_OPENAI_FIELDS, _JSON, max_size=5)
    | st.fixed_dictionaries({"messages": st.lists(_MESSAGE, max_size=3)}, optional={"stream": st.booleans()})
)
def test_no_openai_body_yields_a_500(base: str, body: Any) -> None:
    with httpx.Client(timeout=10) as client:
        response = client.post(
            f"{base}/v1/chat/completions", content=json.dumps(body), headers={"content-type": "application/json"}
        )
    assert_no_proxy_fault(response)
    if response.status_code != 200:
        assert response.json()["error"]["type"] == "invalid_request_error"


@pytest.fixture(scope="module")
def roomy() -> Iterator[str]:
    """The default body limit (1 MiB): room for bodies that are hostile in shape, not in size."""
    with running_proxy(proxy_settings()) as url:
        yield url


_ENDPOINTS = ["/chat/stream", "/v1/chat/completions", "/auth/session"]
_DEEP = [
    b"[" * 20_000,
    b'{"messages": [{"role": "user", "content": "hi"}], "prompt": ' + b"[" * 20_000 + b"]" * 20_000 + b"}",
    b'{"messages": [{"role": "user", "content": "hi"}], "tools": ' + b'[{"a":' * 100 + b"1" + b"}]" * 100 + b"}",
]


@pytest.mark.parametrize("path", _ENDPOINTS)
@pytest.mark.parametrize("raw", _DEEP, ids=["bare", "in-a-field", "just-past-the-limit"])
async def test_deeply_nested_bodies_are_400(roomy: str, path: str, raw: bytes) -> None:
    """Regression: 20 KB of nested `[` was a 500 with a traceback (a RecursionError nobody caught)."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{roomy}{path}", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_request")
    assert "nests deeper" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/chat/stream", {"prompt": "a", "max_tokens": 2**70}, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "max_tokens": 2**70}, "max_tokens"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "seed": 2**70}, "seed"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "n": 10**6}, "n"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "a"}], "max_completion_tokens": 10**9},
            "max_completion_tokens",
        ),
    ],
)
async def test_out_of_range_integers_are_422_naming_the_field(
    roomy: str, path: str, body: dict[str, Any], field: str
) -> None:
    """Regression: a `max_tokens` of 2^70 was forwarded upstream."""
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(f"{roomy}{path}", json=body)
    assert_error(response, 422, "invalid_request", field)


async def test_a_number_json_cannot_hold_is_a_4xx(roomy: str) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            f"{roomy}/chat/stream",
            content=b'{"prompt": "a", "temperature": 1e400}',
            headers={"content-type": "application/json"},
        )
    assert_error(response, 422, "invalid_request", "body")


_HOSTILE = st.one_of(
    st.integers(min_value=1, max_value=3000).map(lambda depth: "[" * depth + "]" * depth),
    st.integers(min_value=1, max_value=3000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
    st.integers(min_value=2**53 - 2, max_value=2**90).map(str),
    st.sampled_from(["1e400", "-1e400", "123456789012345678901234567890", "1.5e308"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(path=st.sampled_from(_ENDPOINTS), field=_FIELDS | _OPENAI_FIELDS, value=_HOSTILE)
def test_no_hostile_shape_yields_a_500(roomy: str, path: str, field: str, value: str) -> None:
    content = '{"messages": [{"role": "user", "content": "hi"}], "' + field + '": ' + value + "}"
    with httpx.Client(timeout=10) as client:
        response = client.post(f"{roomy}{path}", content=content, headers={"content-type": "application/json"})
    assert_no_proxy_fault(response)
