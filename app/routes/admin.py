"""The admin API: `GET /admin/streams` (every replica's open streams), `GET /admin/streams/{id}` and
`DELETE /admin/streams/{id}` (stop it, wherever it runs), `GET /admin/replica` (the answering replica's counters).

Mounted only when `auth.admin_keys` has a key; each handler checks the admin key first.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, delete, get
from litestar.di import NamedDependency
from litestar.params import FromPath

from app.admin import AdminService, shown
from app.sessions import SKIP_SESSION


@get("/admin/streams", opt={SKIP_SESSION: True})
async def admin_list_streams(
    request: Request[Any, Any, Any],
    admin_service: NamedDependency[AdminService],
) -> dict[str, Any]:
    admin_service.authorize(request.headers)
    query = request.query_params
    raw_limit = query.get("limit", "50")
    limit = int(raw_limit) if raw_limit.isdigit() and len(raw_limit) < 6 else 0
    records, cursor = await admin_service.streams(
        principal=query.get("principal"),
        model=query.get("model"),
        replica=query.get("replica"),
        limit=limit,
        cursor=query.get("cursor"),
    )
    return {"object": "list", "data": [shown(r) for r in records], "next_cursor": cursor}


@get("/admin/replica", opt={SKIP_SESSION: True})
async def admin_replica(
    request: Request[Any, Any, Any],
    admin_service: NamedDependency[AdminService],
) -> dict[str, Any]:
    admin_service.authorize(request.headers)
    return admin_service.replica()


@get("/admin/streams/{stream_id:str}", opt={SKIP_SESSION: True})
async def admin_get_stream(
    request: Request[Any, Any, Any],
    admin_service: NamedDependency[AdminService],
    stream_id: FromPath[str],
) -> dict[str, Any]:
    admin_service.authorize(request.headers)
    return shown(await admin_service.stream(stream_id))


@delete("/admin/streams/{stream_id:str}", status_code=200, opt={SKIP_SESSION: True})
async def admin_stop_stream(
    request: Request[Any, Any, Any],
    admin_service: NamedDependency[AdminService],
    stream_id: FromPath[str],
) -> Response[dict[str, Any]]:
    """Stop a stream on any replica: 200 and its final record if it ended within 2 s, else 202."""
    admin_service.authorize(request.headers)
    ended, record = await admin_service.stop(stream_id, "admin")
    if ended:
        return Response(shown(record, state="cancelled"), status_code=200)
    return Response(shown(record), status_code=202)
