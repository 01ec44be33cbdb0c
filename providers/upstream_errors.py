"""What an upstream says when it fails (an error status, an in-band error), translated to `app.errors` in
tokenrelay's own words (shared by the HTTP providers)."""

from __future__ import annotations

import math
import re
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
from app.redaction import Redactor
from providers.http_client import UpstreamResponse

ERROR_BODY_LIMIT = 64 * 1024
DEFAULT_RETRY_AFTER_SECONDS = 1
# What is kept of an upstream's own explanation (after redaction): enough to act on, never a whole page.
DETAIL_LIMIT = 300

_IDENTIFIER = re.compile(r"[A-Za-z0-9_.:-]{1,64}")


class _ErrorInfo(msgspec.Struct):
    message: str = ""
    type: str | None = None
    code: str | int | None = None


class _ErrorEnvelope(msgspec.Struct):
    error: _ErrorInfo | str | None = None
    message: str | None = None
    type: str | None = None


_decode_error = msgspec.json.Decoder(_ErrorEnvelope).decode

_STATUS_ERRORS: dict[int, tuple[type[ProxyError], str]] = {
    404: (UpstreamModelNotFound, "the upstream does not know the model"),
    408: (UpstreamTimeout, "the upstream timed out the request"),
}


class UpstreamErrors:
    """Turns what an upstream says about a failure into tokenrelay's words: the status, the upstream's error type
    and code, and its explanation redacted (it may quote the credentials tokenrelay sent) and shortened."""

    def __init__(self, redactor: Redactor) -> None:
        self._redactor = redactor

    async def from_status(self, response: UpstreamResponse, model: str) -> ProxyError:
        """The error for a non-200 upstream answer; reads (a bounded part of) its body for the explanation."""
        status = response.status
        if status in (401, 403):
            # Whatever the upstream says about credentials is about the operator's key: none of it is relayed.
            return UpstreamError(
                f"the upstream refused tokenrelay's credentials ({status}); check the provider's api_key"
            )
        detail = self.describe(status, (await response.read(ERROR_BODY_LIMIT)).decode("utf-8", errors="replace"))
        if status == 429:
            retry_after = parse_retry_after(response.header("retry-after"))
            return UpstreamRateLimited(f"the upstream is rate limiting {detail}", retry_after=retry_after)
        if status in _STATUS_ERRORS:
            error_class, summary = _STATUS_ERRORS[status]
            return error_class(f"{summary} (model {model!r}) {detail}")
        if status >= 500:
            return UpstreamUnavailable(f"the upstream failed {detail}")
        if status >= 400:
            return UpstreamRejectedRequest(f"the upstream rejected the request {detail}")
        return UpstreamError(f"the upstream answered with an unexpected status {status}")

    def reported(self, body: str) -> UpstreamError:
        """An error the upstream reported inside a stream (an `error` event or chunk)."""
        return UpstreamError(f"the upstream reported an error {self.describe(None, body)}")

    def describe(self, status: int | None, body: str) -> str:
        """`(<status> <type>/<code>): <explanation>` from an OpenAI- or Anthropic-style error body (or any text)."""
        kind, message = _parse(body)
        label = " ".join(part for part in (str(status) if status else "", kind) if part)
        text = self._redactor.clean(" ".join(message.split()))
        if len(text) > DETAIL_LIMIT:
            text = text[: DETAIL_LIMIT - 1] + "…"
        head = f"({label})" if label else ""
        return f"{head}: {text}" if text else head


def _parse(body: str) -> tuple[str, str]:
    """The error's type/code (identifiers only: anything else is not trusted as one) and its message."""
    try:
        envelope = _decode_error(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return "", body.strip()
    info = envelope.error
    if isinstance(info, _ErrorInfo):
        parts = [str(p) for p in (info.type, info.code) if p is not None and _IDENTIFIER.fullmatch(str(p))]
        return "/".join(parts), info.message
    if isinstance(info, str):
        return "", info
    kind = envelope.type if envelope.type and _IDENTIFIER.fullmatch(envelope.type) else ""
    return kind, envelope.message or ""


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
