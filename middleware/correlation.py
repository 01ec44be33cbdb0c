"""Correlation ids: adopt a valid `X-Request-ID` / `X-Correlation-ID` from the request, or the edge makes one."""

from __future__ import annotations

import re
from typing import Any

_VALID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_INCOMING = (b"x-request-id", b"x-correlation-id")


def incoming_request_id(headers: Any) -> str | None:
    """The first acceptable id among the request's headers; anything else is ignored, never echoed."""
    for wanted in _INCOMING:
        for name, value in headers:
            if name.lower() == wanted:
                try:
                    text: str = value.decode("ascii")
                except UnicodeDecodeError:
                    continue
                if _VALID.fullmatch(text):
                    return text
    return None
