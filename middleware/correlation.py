"""Correlation ids: adopt a valid `X-Request-ID` / `X-Correlation-ID` from the request, or the edge makes one."""

from __future__ import annotations

import re
from typing import Any

_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_INCOMING = (b"x-request-id", b"x-correlation-id")


def incoming_request_id(headers: Any) -> str | None:
    """The first acceptable id among the request's headers, an `X-Request-ID` before an `X-Correlation-ID`;
    anything else is ignored, never echoed. Names are lower case in an ASGI scope."""
    found: dict[bytes, str] = {}
    for name, value in headers:
        if name in _INCOMING and name not in found:
            try:
                text: str = value.decode("ascii")
            except UnicodeDecodeError:
                continue
            if _VALID.fullmatch(text):
                found[name] = text
    return found.get(_INCOMING[0]) or found.get(_INCOMING[1])
