"""The OpenAI-compatible API: `POST /v1/chat/completions` (stream and not) and `GET /v1/models`."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.types import ASGIApp

from app.chat_service import ChatService
from app.incoming import Incoming
from app.openai_input import parse_chat_completion
from app.request_context import request_id_of
from app.sessions import SKIP_SESSION


@post("/v1/chat/completions", status_code=200, opt={SKIP_SESSION: True})
async def chat_completions(
    request: Request[Any, Any, Any],
    chat_service: NamedDependency[ChatService],
) -> ASGIApp:
    return await open_chat_completion(chat_service, request)


async def open_chat_completion(chat_service: ChatService, request: Incoming) -> ASGIApp:
    """The route's work, also served outside Litestar (`app.hot_routes`)."""
    caller = await chat_service.caller(request)
    chat = parse_chat_completion(await chat_service.read_body(request), request.headers.get("content-type"))
    return await chat_service.open_completion(chat, request_id_of(request.scope), caller)


@get("/v1/models", opt={SKIP_SESSION: True})
async def list_models(
    request: Request[Any, Any, Any],
    chat_service: NamedDependency[ChatService],
) -> dict[str, Any]:
    caller = await chat_service.caller(request)
    names = chat_service.models_for(caller)
    models = [{"id": name, "object": "model", "created": 0, "owned_by": "tokenrelay"} for name in names]
    return {"object": "list", "data": models}
