"""Browser sessions: `POST /auth/session` trades an API key for an HttpOnly cookie that EventSource sends by itself.

With auth off it opens an anonymous session, which then is the browser's rate-limit principal. Logins count
against the client address's request limit, so neither key guessing nor session minting is free.
"""

from __future__ import annotations

import secrets
from typing import Any

import msgspec
from litestar import Request, delete, post
from litestar.di import NamedDependency

from app.chat_service import ChatService


@post("/auth/session", status_code=200)
async def open_session(request: Request[Any, Any, Any], chat_service: NamedDependency[ChatService]) -> dict[str, Any]:
    body = await request.body()
    offered: str | None = None
    if body:
        try:
            data = msgspec.json.decode(body)
        except msgspec.DecodeError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("api_key"), str):
            offered = data["api_key"]
    peer = request.client.host if request.client else None
    key_id = await chat_service.login(peer, request.headers, offered)
    request.set_session({"sid": secrets.token_urlsafe(16), "key_id": key_id})
    return {"key_id": key_id, "expires_in": chat_service.session_seconds}


@delete("/auth/session", status_code=204)
async def close_session(request: Request[Any, Any, Any]) -> None:
    request.clear_session()
