"""HTTP error statuses from an upstream, translated to `app.errors` (shared by the HTTP providers)."""

from __future__ import annotations

import math
import time
from email.utils import parsedate_to_datetime

import msgspec

from app.errors import (
    ProxyError,
    UpstreamError,
    UpstreamModelNotFound,
    UpstreamRateLimited,
    UpstreamRejectedRequest,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from providers.http_client import UpstreamResponse

ERROR_BODY_LIMIT = 64 * 1024
DEFAULT_RETRY_AFTER_SECONDS = 1


class _ErrorInfo(msgspec.Struct):
    message: str = ""


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorInfo | str | None = None
    message: str | None = None


_decode_error = msgspec.json.Decoder(_ErrorEnvelope).decode

_STATUS_ERRORS: dict[int, tuple[type[ProxyError], str]] = {
    404: (UpstreamModelNotFound, "the upstream does not know the model"),
    408: (UpstreamTimeout, "the upstream timed out the request"),
}


async def status_error(response: UpstreamResponse, model: str) -> ProxyError:
    """The error for a non-200 upstream answer; reads (a bounded part of) its body for the explanation."""
    status = response.status
    if status in (401, 403):
        # The upstream's explanation can quote (part of) the operator's key: it stays out of the response.
        return UpstreamError(f"the upstream refused tokenrelay's credentials ({status}); check the provider's api_key")
    detail = error_message((await response.read(ERROR_BODY_LIMIT)).decode("utf-8", errors="replace"))
    if status == 429:
        retry_after = parse_retry_after(response.header("retry-after"))
        return UpstreamRateLimited(f"the upstream is rate limiting: {detail}", retry_after=retry_after)
    if status in _STATUS_ERRORS:
        error_class, summary = _STATUS_ERRORS[status]
        return error_class(f"{summary} (model {model!r}): {detail}")
    if status >= 500:
        return UpstreamUnavailable(f"the upstream failed ({status}): {detail}")
    if status >= 400:
        return UpstreamRejectedRequest(f"the upstream rejected the request ({status}): {detail}")
    return UpstreamError(f"the upstream answered with an unexpected status {status}")


def error_message(body: str) -> str:
    """The human explanation in an OpenAI- or Anthropic-style error body, else the body itself (shortened)."""
    try:
        envelope = _decode_error(body)
    except msgspec.DecodeError:
        return body.strip()[:500] or "no details"
    if isinstance(envelope.error, _ErrorInfo) and envelope.error.message:
        return envelope.error.message
    if isinstance(envelope.error, str):
        return envelope.error
    return envelope.message or body.strip()[:500] or "no details"


def parse_retry_after(value: str | None, *, now: float | None = None) -> int:
    """Whole seconds from a `Retry-After` header (seconds or an HTTP date), at least 1."""
    if value:
        try:
            return max(1, math.ceil(float(value)))
        except ValueError:
            pass
        try:
            when = parsedate_to_datetime(value).timestamp()
        except (TypeError, ValueError):
            return DEFAULT_RETRY_AFTER_SECONDS
        return max(1, math.ceil(when - (time.time() if now is None else now)))
    return DEFAULT_RETRY_AFTER_SECONDS
