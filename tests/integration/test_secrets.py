"""No secret leaves through an error: an upstream that quotes the credentials tokenrelay sent it, in every error
shape, before and after the first token, on both APIs, reaches neither a client nor a log line."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.redaction import REDACTED, Redactor
from app.settings import Settings
from bench.fake_upstream import FakeUpstream
from tests.support.logs import RecordCollector
from tests.support.servers import proxy_settings, running_proxy

pytestmark = pytest.mark.anyio

# One key shaped like a credential, and two that nothing but the configuration can recognise.
SECRETS = {
    "shaped": ("openai", "sk-live-0123456789ABCDEFsecret"),
    "plain": ("openai", "zz9-plural-alpha-secret-value"),
    "claude": ("anthropic", "plain-anthropic-secret-key-99"),
}
STATUS_SHAPES = [f"leak?code={code}&shape=json" for code in (400, 404, 429, 500, 503)]
STATUS_SHAPES += ["leak?code=400&shape=text", "leak?code=502&shape=text"]
STREAM_SHAPES = ["leak?shape=inband", "leak?shape=event", "leak?shape=midstream"]


def scenarios() -> list[tuple[str, str]]:
    found = []
    for provider, (kind, _) in SECRETS.items():
        shapes = STATUS_SHAPES + (["leak?shape=event"] if kind == "anthropic" else STREAM_SHAPES)
        found += [(provider, shape) for shape in shapes]
    return found


def public(provider: str, shape: str) -> str:
    return f"{provider}/{shape}"


@pytest.fixture(scope="module")
def leaky_proxy(upstream: FakeUpstream) -> Iterator[str]:
    data: dict[str, Any] = proxy_settings().model_dump(mode="python")
    for provider, (kind, key) in SECRETS.items():
        base = upstream.base_url if kind == "openai" else upstream.base_url.removesuffix("/v1")
        data["providers"][provider] = {"type": kind, "base_url": base, "api_key": key}
    data["models"] = {public(p, s): {"provider": p, "model": s} for p, s in scenarios()}
    data["default_model"] = next(iter(data["models"]))
    data["routing"] = {"attempts_per_target": 1}
    data["auth"] = {"keys": [{"id": "client", "key": "client-key-0123456789-secret"}]}
    with running_proxy(Settings.model_validate(data)) as base:
        yield base


def leaked(text: str) -> list[str]:
    return [key for _, key in SECRETS.values() if key in text] + (["client-key"] if "client-key" in text else [])


@pytest.mark.parametrize(("provider", "shape"), scenarios())
async def test_an_upstream_quoting_credentials_leaks_nothing(
    leaky_proxy: str, provider: str, shape: str, logs: RecordCollector
) -> None:
    model = public(provider, shape)
    headers = {"authorization": "Bearer client-key-0123456789-secret"}
    messages = [{"role": "user", "content": "hi"}]
    seen: list[str] = []
    async with httpx.AsyncClient(timeout=10, headers=headers) as client:
        for path, body in (
            ("/chat/stream", {"model": model, "prompt": "hi"}),
            ("/v1/chat/completions", {"model": model, "messages": messages, "stream": True}),
            ("/v1/chat/completions", {"model": model, "messages": messages}),
        ):
            response = await client.post(f"{leaky_proxy}{path}", json=body)
            seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")
            assert response.status_code != 200 or b"error" in response.content, response.text
    seen += logs.messages()
    seen += [r.exc_text or "" for r in logs.records]
    everything = "\n".join(seen)
    assert leaked(everything) == [], everything
    if "shape=json" in shape:
        # The client still learns what the upstream objected to, in tokenrelay's words.
        assert "invalid_request_error/bad_header" in everything
        assert REDACTED in everything


@pytest.mark.parametrize(
    ("text", "kept"),
    [
        ("Authorization: Bearer abc.def-ghi_jkl", "Authorization: "),
        ('{"authorization": "Bearer abc.def-ghi_jkl"}', '{"authorization": "'),
        ("x-api-key: abcdefghijkl", "x-api-key: "),
        ("api_key=abcdefghijkl&x=1", "api_key="),
        ("you sent sk-ant-api03-abcdefghijkl", "you sent "),
        ("bearer abcdefghijkl", "bearer "),
        ("access-token: abcdefghijkl", "access-token: "),
        ("access_token=abcdefghijkl", "access_token="),
        ("accesstoken=abcdefghijkl", "accesstoken="),
        ("apikey=abcdefghijkl", "apikey="),
        ("api-key: abcdefghijkl", "api-key: "),
        ("password: abcdefghijkl", "password: "),
        ("client_secret=abcdefghijkl", "client_secret="),
        ("Authorization: Basic abcdefghijkl", "Authorization: Basic "),
    ],
)
def test_credential_shaped_text_is_redacted(text: str, kept: str) -> None:
    cleaned = Redactor(()).clean(text)
    assert "abcdefghijkl" not in cleaned
    assert cleaned.startswith(kept)
    assert REDACTED in cleaned
    # In any case, and beside non-ASCII text (which takes the slow path): the quick check before the pattern
    # must never let a shape through.
    for variant in (text.upper(), text.swapcase(), f"{text} \u00e9t\u00e9", f"\u212a {text}"):
        assert "abcdefghijkl" not in Redactor(()).clean(variant).lower(), variant


def test_ordinary_words_survive_redaction() -> None:
    text = "the maximum token limit is 4096 tokens; basic usage applies"
    assert Redactor(()).clean(text) == text


def test_configured_secrets_are_redacted_whatever_their_shape() -> None:
    settings = Settings.model_validate(
        {
            "providers": {
                "up": {
                    "type": "openai",
                    "base_url": "https://user:url-password-123@up.example/v1",
                    "api_key": "k9-plain-value",
                    "headers": {"x-goog-api-key": "header-secret-77"},
                },
            },
            "models": {"m": {"provider": "up", "model": "x"}},
            "state": {"redis_url": "redis://:redis-password-5@cache:6379/0"},
        }
    )
    redactor = Redactor.from_settings(settings)
    text = "k9-plain-value header-secret-77 url-password-123 redis-password-5"
    assert redactor.clean(text) == " ".join([REDACTED] * 4)


@pytest.mark.parametrize("count", [1, 3, 40], ids=lambda n: f"{n} secrets")
def test_every_configured_secret_is_redacted_however_many_there_are(count: int) -> None:
    secrets = [f"team-{i:03d}-key-value" for i in range(count)]
    redactor = Redactor(secrets)
    for secret in secrets:
        assert redactor.clean(f"ok {secret}, twice {secret}") == f"ok {REDACTED}, twice {REDACTED}"
    assert redactor.clean('an access line: 127.0.0.1 - "POST /v1 HTTP/1.1" 200') == (
        'an access line: 127.0.0.1 - "POST /v1 HTTP/1.1" 200'
    )
