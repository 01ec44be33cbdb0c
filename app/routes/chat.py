"""`/chat/stream`: GET for `EventSource` (resumable: `Last-Event-ID` continues the stream it names), POST with
JSON for `fetch` and `curl -N` (resumable if the body asks)."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.types import ASGIApp

from app.chat_input import parse_json_body, parse_query
from app.chat_service import ChatService
from app.incoming import Incoming
from app.replies import no_content
from app.request_context import request_id_of
from app.resume import ResumeService, parse_event_id
from app.sessions import SKIP_SESSION


@get("/chat/stream", opt={SKIP_SESSION: True})
async def chat_stream_get(
    request: Request[Any, Any, Any],
    chat_service: NamedDependency[ChatService],
    resume_service: NamedDependency[ResumeService],
) -> ASGIApp:
    caller = await chat_service.caller(request)
    last_event_id = request.headers.get("last-event-id")
    if last_event_id:
        # EventSource coming back: the stream it names goes on from there; the prompt is never run again.
        point = parse_event_id(last_event_id)
        return await resume_service.watch(point, caller.principal) or no_content
    chat = parse_query(request.query_params)
    if not chat_service.resumable_by_default:
        return await chat_service.open_sse(chat, request_id_of(request.scope), caller)
    stream = await chat_service.open_resumable(chat, request_id_of(request.scope), caller)
    return chat_service.watch_new(stream)


@post("/chat/stream", status_code=200, opt={SKIP_SESSION: True})
async def chat_stream_post(
    request: Request[Any, Any, Any],
    chat_service: NamedDependency[ChatService],
) -> ASGIApp:
    return await open_chat_stream(chat_service, request)


async def open_chat_stream(chat_service: ChatService, request: Incoming) -> ASGIApp:
    """The POST route's work, also served outside Litestar (`app.hot_routes`)."""
    caller = await chat_service.caller(request)
    chat = parse_json_body(await chat_service.read_body(request), request.headers.get("content-type"))
    if not chat.resumable:
        return await chat_service.open_sse(chat, request_id_of(request.scope), caller)
    stream = await chat_service.open_resumable(chat, request_id_of(request.scope), caller)
    return chat_service.watch_new(stream)
