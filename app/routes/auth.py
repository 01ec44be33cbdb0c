"""Browser sessions: `POST /auth/session` trades an API key for an HttpOnly cookie that EventSource sends by itself.

With auth off it opens an anonymous session (whose principal is still the client address). Logins are limited per
address (`sessions.logins_per_minute`, whatever the request limit), so neither key guessing nor session minting is
free, and the in-process store holds at most `sessions.max_sessions`.
"""

from __future__ import annotations

import secrets
from typing import Any

from litestar import Request, Response, delete, post
from litestar.di import NamedDependency

from app.chat_service import ChatService
from app.errors import InvalidRequest
from app.json_body import json_object
from app.sessions import SKIP_SESSION


@post("/auth/session", status_code=200)
async def open_session(request: Request[Any, Any, Any], chat_service: NamedDependency[ChatService]) -> dict[str, Any]:
    body = await chat_service.read_body(request)
    offered: str | None = None
    if body:
        offered = json_object(body, request.headers.get("content-type")).get("api_key")
        if offered is not None and not isinstance(offered, str):
            raise InvalidRequest("api_key: must be a string", field="api_key")
    key_id = await chat_service.login(request, offered)
    request.set_session({"sid": secrets.token_urlsafe(16), "key_id": key_id})
    return {"key_id": key_id, "expires_in": chat_service.session_seconds}


@delete("/auth/session", status_code=204, opt={SKIP_SESSION: True})
async def close_session(request: Request[Any, Any, Any], chat_service: NamedDependency[ChatService]) -> Response[None]:
    return Response(None, status_code=204, cookies=[await chat_service.end_session(request)])
