"""Redaction: no configured secret, and nothing shaped like a credential, leaves through an error or a log line.

Upstream error text is untrusted: providers and OpenAI-compatible servers quote request headers back ("invalid
header Authorization: Bearer sk-..."), and a proxy that relays that text hands the operator's key to every client.
`Redactor` removes every secret the configuration holds (provider keys and header values, client API keys, the
Redis password) and anything credential-shaped (`Bearer ...`, `sk-...`, `x-api-key: ...`, `api_key=...`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from app.settings import EchoProviderSettings, Settings

REDACTED = "[redacted]"
# Shorter configured values (e.g. a header value "1") are not secrets worth hiding and would mangle any text.
MIN_SECRET_LENGTH = 6

_CREDENTIAL_SHAPES = re.compile(
    r"""(?ix)
    # x-api-key: <key>, "authorization": "Bearer <key>", api_key=<key>, client_secret=<key> (the label stays, the
    # value goes)
    (?P<name>\b(?:\w*[-_])?(?:x-api-key|api[-_]?key|access[-_]?token|authorization|password|secret)["']?\s*[:=]\s*["']?)
        (?!(?:(?:bearer|basic)\s+)?\[redacted\])(?P<bearer>(?:bearer|basic)\s+)?[^\s"',;)}\]]+
    # Bearer <token> (a bare "Basic <word>" is too often English: Basic is redacted after a label only)
    | (?P<scheme>\bbearer\s+)(?!\[redacted\])[^\s"',;)}\]]+
    # sk-..., sk-ant-..., sk-proj-... (OpenAI, Anthropic and many others)
    | \b(?:sk|pk|rk)-[A-Za-z0-9_\-]{6,}
    """
)
# Every credential shape above contains one of these (lower-cased): an ASCII text with none of them, which is most
# log lines, skips the pattern, by far the costliest part of writing a line. Text that is not ASCII always takes
# the pattern: case-insensitive matching equates a few non-ASCII letters with ASCII ones (K, the Kelvin sign, is k).
# Spelled out whole ("access-token", not "access"): every access line holds "tokenrelay.access", and a bare "access"
# sent each one through the pattern (17 µs a line, against 3 µs).
_SHAPE_WORDS = (
    "api-key",
    "api_key",
    "apikey",
    "access-token",
    "access_token",
    "accesstoken",
    "authorization",
    "password",
    "secret",
    "bearer",
    "k-",
)
# Up to this many configured secrets, looking for each with `in` before running their pattern is cheaper than the
# pattern alone (an alternation, tried at every position of the line).
_FEW_SECRETS = 16


class Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        found = {s for s in secrets if len(s) >= MIN_SECRET_LENGTH}
        # Longest first, so a secret that contains another is removed whole.
        self._secrets = (
            re.compile("|".join(re.escape(s) for s in sorted(found, key=len, reverse=True))) if found else None
        )
        self._few = tuple(found) if len(found) <= _FEW_SECRETS else None

    @classmethod
    def from_settings(cls, settings: Settings) -> Redactor:
        return cls(configured_secrets(settings))

    def clean(self, text: str) -> str:
        if self._secrets is not None and (self._few is None or any(secret in text for secret in self._few)):
            text = self._secrets.sub(REDACTED, text)
        if text.isascii():
            lowered = text.lower()
            if not any(word in lowered for word in _SHAPE_WORDS):
                return text
        return _CREDENTIAL_SHAPES.sub(_keep_label, text)


def _keep_label(match: re.Match[str]) -> str:
    label = match.group("scheme") or (match.group("name") or "") + (match.group("bearer") or "")
    return label + REDACTED


def configured_secrets(settings: Settings) -> list[str]:
    """Every secret value the configuration holds."""
    found: list[str] = []
    for provider in settings.providers.values():
        if isinstance(provider, EchoProviderSettings):
            continue
        if provider.api_key is not None:
            found.append(provider.api_key.get_secret_value())
        found.extend(provider.headers.values())  # custom headers often carry credentials (x-goog-api-key ...)
        found.extend(_url_password(provider.base_url))
    for key in (*settings.auth.keys, *settings.auth.admin_keys):
        if key.key is not None:
            found.append(key.key.get_secret_value())
    found.extend(_url_password(settings.state.redis_url))
    return found


def _url_password(url: str) -> list[str]:
    try:
        password = urlsplit(url).password
    except ValueError:
        return []
    return [password] if password else []
