"""`/chat/streams`: streams as objects. `POST` creates a detached stream (it runs to its end whoever watches),
`GET /chat/streams/{id}` watches one from a resume point, `DELETE /chat/streams/{id}` stops one's own."""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath
from litestar.types import ASGIApp

from app.admin import AdminService, shown
from app.chat_input import parse_json_body
from app.chat_service import ChatService
from app.replies import Reply, no_content
from app.request_context import request_id_of
from app.resume import ResumeService, resume_point
from app.sessions import SKIP_SESSION


@post("/chat/streams", status_code=201, opt={SKIP_SESSION: True})
async def create_stream(
    request: Request[Any, Any, Any],
    chat_service: NamedDependency[ChatService],
) -> ASGIApp:
    """201 `{"id", "url"}` once admission passed and the upstream answered; a refusal before that is its own
    status, as on `/chat/stream`."""
    caller = await chat_service.caller(request)
    chat = parse_json_body(await chat_service.read_body(request), request.headers.get("content-type"))
    stream = await chat_service.open_resumable(chat, request_id_of(request.scope), caller, detached=True)
    status = await stream.opened()
    log = stream.log
    if status != 200:
        return Reply(status, log.head, log.refusal)
    url = f"/chat/streams/{stream.stream_id}"
    kept = [(k, v) for k, v in log.head if k.startswith((b"x-ratelimit-", b"x-tokenrelay-"))]
    return Reply.json(201, {"id": stream.stream_id, "url": url}, [(b"location", url.encode()), *kept])


@get("/chat/streams/{stream_id:str}", opt={SKIP_SESSION: True})
async def watch_stream(
    request: Request[Any, Any, Any],
    chat_service: NamedDependency[ChatService],
    resume_service: NamedDependency[ResumeService],
    stream_id: FromPath[str],
) -> ASGIApp:
    """The stream's frames after `Last-Event-ID` (which must name it), else after `?after=<seq>`, else all of
    them; then the live stream. 204 if it has ended with nothing after that point."""
    caller = await chat_service.caller(request)
    point = resume_point(stream_id, request.headers.get("last-event-id"), request.query_params.get("after"))
    return await resume_service.watch(point, caller.principal) or no_content


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
