"""Every exception an HTTP client in use can raise translates to a specific `app.errors` class.

Modelled on httpx's `test_httpcore_all_exceptions_mapped`: a new exception class in a client library makes this
fail until it is mapped, instead of surfacing as a 500.
"""

from __future__ import annotations

import inspect
import ssl
from datetime import UTC, datetime

import aiohttp
import aiohttp.client_exceptions
import httptools
import httpx
import pytest

from app.errors import ProxyError, UpstreamError
from providers import aiohttp_client, httptools_client, httpx_client
from providers.upstream_errors import parse_retry_after


def exception_classes(module: object) -> list[type[BaseException]]:
    names = getattr(module, "__all__", dir(module))
    found = (getattr(module, name) for name in names)
    return [c for c in found if inspect.isclass(c) and issubclass(c, BaseException)]


@pytest.mark.parametrize("exc_class", exception_classes(aiohttp.client_exceptions), ids=lambda c: c.__name__)
def test_every_aiohttp_exception_is_mapped(exc_class: type[BaseException]) -> None:
    mapped = [target for source, target, _ in aiohttp_client.EXCEPTION_MAP if issubclass(exc_class, source)]
    assert mapped, f"{exc_class.__name__} has no translation"
    assert all(issubclass(t, ProxyError) for t in mapped)


@pytest.mark.parametrize("exc_class", exception_classes(httpx), ids=lambda c: c.__name__)
def test_every_httpx_exception_is_mapped(exc_class: type[BaseException]) -> None:
    if exc_class.__module__.startswith("httpx") and issubclass(exc_class, Exception):
        mapped = [t for source, t, _ in httpx_client.EXCEPTION_MAP if issubclass(exc_class, source)]
        assert mapped, f"{exc_class.__name__} has no translation"


@pytest.mark.parametrize(
    "exc_class",
    [
        *exception_classes(httptools),
        TimeoutError,
        ConnectionRefusedError,
        ConnectionResetError,
        ConnectionAbortedError,
        BrokenPipeError,
        ssl.SSLError,
        ssl.SSLCertVerificationError,
        OSError,
    ],
    ids=lambda c: c.__name__,
)
def test_every_httptools_client_exception_is_mapped(exc_class: type[BaseException]) -> None:
    mapped = [t for source, t, _ in httptools_client.EXCEPTION_MAP if issubclass(exc_class, source)]
    assert mapped, f"{exc_class.__name__} has no translation"


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (aiohttp.ServerTimeoutError("slow"), "upstream_timeout"),
        (aiohttp.ClientPayloadError("cut"), "upstream_error"),
        (aiohttp.ServerDisconnectedError(), "upstream_error"),
    ],
)
def test_aiohttp_translation_picks_the_most_specific_class(exc: BaseException, code: str) -> None:
    mapped = aiohttp_client.translate(exc)
    assert mapped is not None
    assert mapped.code == code


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (ConnectionRefusedError(111, "refused"), "upstream_unavailable"),
        (TimeoutError(), "upstream_timeout"),
        (httptools.HttpParserInvalidStatusError("bad"), "upstream_error"),
    ],
)
def test_httptools_translation(exc: BaseException, code: str) -> None:
    mapped = httptools_client.translate(exc)
    assert isinstance(mapped, UpstreamError)
    assert mapped.code == code


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("7", 7),
        ("0.2", 1),
        ("Wed, 21 Oct 2026 07:28:30 GMT", 30),  # an HTTP date, 30 s after `now`
        ("Wed, 21 Oct 2026 07:27:00 GMT", 1),  # in the past: at least 1
        ("soon", 1),
        (None, 1),
    ],
)
def test_retry_after_in_seconds_or_as_an_http_date(value: str | None, expected: int) -> None:
    now = datetime(2026, 10, 21, 7, 28, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after(value, now=now) == expected
