"""`/chat/stream`: GET for `EventSource`, POST with JSON for `fetch` and `curl -N`; `DELETE /chat/streams/{id}`
stops one's own stream."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.types import ASGIApp

from app.admin import AdminService, shown
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


@delete("/chat/streams/{stream_id:str}", status_code=200, opt={SKIP_SESSION: True})
async def stop_own_stream(
    request: Request[Any, Any, Any],
    chat_service: NamedDependency[ChatService],
    admin_service: NamedDependency[AdminService],
    stream_id: FromPath[str],
) -> Response[dict[str, Any]]:
    """A client stops its own stream (a UI's Stop button), on whichever replica runs it: 200 and the final
    record if it ended within 2 s, else 202; another principal's stream is 404, as an unknown one is."""
    caller = await chat_service.caller(request)
    ended, record = await admin_service.stop(stream_id, "client", owner=caller.principal)
    if ended:
        return Response(shown(record, state="cancelled"), status_code=200)
    return Response(shown(record), status_code=202)
