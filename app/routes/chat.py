"""`/chat/stream`: GET for `EventSource`, POST with JSON for `fetch` and `curl -N`."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.types import ASGIApp

from app.chat_input import parse_json_body, parse_query
from app.chat_service import ChatService
from app.request_context import request_id_of
from app.sessions import SKIP_SESSION


@get("/chat/stream", opt={SKIP_SESSION: True})
async def chat_stream_get(
    request: Request[Any, Any, Any],
    chat_service: NamedDependency[ChatService],
) -> ASGIApp:
    caller = await chat_service.caller(request)
    chat = parse_query(request.query_params)
    return await chat_service.open_sse(chat, request_id_of(request.scope), caller)


@post("/chat/stream", status_code=200, opt={SKIP_SESSION: True})
async def chat_stream_post(
    request: Request[Any, Any, Any],
    chat_service: NamedDependency[ChatService],
) -> ASGIApp:
    caller = await chat_service.caller(request)
    chat = parse_json_body(await chat_service.read_body(request), request.headers.get("content-type"))
    return await chat_service.open_sse(chat, request_id_of(request.scope), caller)
