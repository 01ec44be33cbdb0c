"""The admin API: `GET /admin/streams` (every replica's open streams) and `GET /admin/streams/{id}`.

Mounted only when `auth.admin_keys` has a key; each handler checks the admin key first.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Request, get
from litestar.di import NamedDependency

from app.admin import AdminService
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
    return {"object": "list", "data": [msgspec.to_builtins(r) for r in records], "next_cursor": cursor}


@get("/admin/streams/{stream_id:str}", opt={SKIP_SESSION: True})
async def admin_get_stream(
    request: Request[Any, Any, Any],
    admin_service: NamedDependency[AdminService],
    stream_id: str,
) -> dict[str, Any]:
    admin_service.authorize(request.headers)
    result: dict[str, Any] = msgspec.to_builtins(await admin_service.stream(stream_id))
    return result
