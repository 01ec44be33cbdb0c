"""The OpenAI-compatible API: `POST /v1/chat/completions` (stream and not) and `GET /v1/models`."""

from __future__ import annotations

from typing import Any

from litestar import Request, get, post
from litestar.di import NamedDependency
from litestar.types import ASGIApp

from app.chat_service import ChatService
from app.openai_input import parse_chat_completion
from app.request_context import request_id_of


@post("/v1/chat/completions", status_code=200)
async def chat_completions(request: Request[Any, Any, Any], chat_service: NamedDependency[ChatService]) -> ASGIApp:
    chat = parse_chat_completion(await request.body(), request.headers.get("content-type"))
    principal = chat_service.principal(request.client.host if request.client else None, request.headers)
    return await chat_service.open_completion(chat, request_id_of(request.scope), principal)


@get("/v1/models", sync_to_thread=False)
def list_models(chat_service: NamedDependency[ChatService]) -> dict[str, Any]:
    models = [
        {"id": name, "object": "model", "created": 0, "owned_by": "tokenrelay"} for name in chat_service.public_models()
    ]
    return {"object": "list", "data": models}
