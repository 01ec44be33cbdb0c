"""The caller of a request, for the route handlers: identity (API key or session) and rate-limit principal."""

from __future__ import annotations

from typing import Any

from litestar import Request

from app.chat_service import Caller, ChatService
from app.sessions import SessionReader


async def caller_of(request: Request[Any, Any, Any], chat_service: ChatService, sessions: SessionReader) -> Caller:
    session = await sessions.read(request)
    return chat_service.caller(request.client.host if request.client else None, request.headers, session)
