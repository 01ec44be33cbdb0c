"""The admin API's service: who may use it (admin keys only), the registry of open streams across replicas, and
the answering replica's own counters.

Admin keys are their own list (`auth.admin_keys`): a client key never opens `/admin`, and with no admin key
configured the routes are not mounted at all (404), so a deployment that does not use them exposes nothing.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from app.backends.base import Backend, BackendUnavailable
from app.errors import Forbidden, InvalidRequest, LimitsUnavailable, StreamNotFound, Unauthorized
from app.limits import ANNOUNCE_SECONDS
from app.log_flusher import LogFlusher
from app.registry import StopReason, StreamRecord, StreamRegistry, decode_record, owner_digest
from app.resumable import StreamLogs
from middleware.auth import Authenticator, presented_key

STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_PAGE = 500
STOP_WAIT_SECONDS = 2.0  # a DELETE answers 200 if the stream ended within this, else 202
STOP_POLL_SECONDS = 0.02
_SCAN_PAGES = 20  # a filtered listing reads at most this many pages of the index per request


class AdminService:
    def __init__(
        self,
        backend: Backend,
        registry: StreamRegistry,
        admins: Authenticator,
        clients: Authenticator,
        *,
        logs: StreamLogs,
        flusher: LogFlusher | None,
    ) -> None:
        self._backend = backend
        self._registry = registry
        self._admins = admins
        self._clients = clients
        self._logs = logs
        self._flusher = flusher

    def replica(self) -> dict[str, Any]:
        """This replica's own counters (the one that answers: behind a load balancer, any of them)."""
        flusher = self._flusher
        return {
            "replica": self._registry.replica,
            "open_streams": len(self._registry),
            "stream_logs": len(self._logs),
            "log_flusher": None if flusher is None else {"pipelines": flusher.pipelines, "failures": flusher.failures},
        }

    def authorize(self, headers: Mapping[str, str]) -> str:
        """The admin key's id; 401 for no key or a wrong one, 403 for a client key."""
        presented = presented_key(headers)
        if presented is None:
            raise Unauthorized("an admin key is required: Authorization: Bearer <admin key>")
        admin = self._admins.check(presented)
        if admin is not None:
            return admin.key_id
        if self._clients.check(presented) is not None:
            raise Forbidden("a client key may not use the admin API")
        raise Unauthorized("the admin key is not valid")

    async def streams(
        self, *, principal: str | None, model: str | None, replica: str | None, limit: int, cursor: str | None
    ) -> tuple[list[StreamRecord], str | None]:
        """Open streams on every replica, in id order after `cursor`, filtered; and the cursor of the next page."""
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE}", field="limit", status=400)
        if cursor is not None and not STREAM_ID.fullmatch(cursor):
            raise InvalidRequest("cursor is not one this API gave", field="cursor", status=400)
        found: list[StreamRecord] = []
        after = cursor
        for _ in range(_SCAN_PAGES):
            try:
                raw, after = await self._backend.streams(after, max(limit, 100))
            except BackendUnavailable as exc:
                raise LimitsUnavailable("the stream registry is unavailable; try again shortly", retry_after=1) from exc
            for record in map(decode_record, raw):
                if (
                    (principal is None or record.principal == principal)
                    and (model is None or record.model == model)
                    and (replica is None or record.replica == replica)
                ):
                    found.append(record)
            if after is None or len(found) >= limit:
                break
        if len(found) > limit:
            found, after = found[:limit], found[limit - 1].id
        return found, after

    async def stream(self, stream_id: str) -> StreamRecord:
        if not STREAM_ID.fullmatch(stream_id):
            raise InvalidRequest("not a stream id", field="stream_id", status=400)
        local = self._registry.local(stream_id)
        if local is not None:
            # This replica's own: known from its first moment, not only once a heartbeat has written its record.
            return local.record(self._registry.replica)
        try:
            raw = await self._backend.stream(stream_id)
            if raw is None:
                # Another replica's stream may be younger than its record, which its replica writes within
                # `ANNOUNCE_SECONDS`: a Stop pressed at once after the start still finds it.
                # One look more, not a poll: an unknown or finished stream costs one read of the store more.
                await asyncio.sleep(2 * ANNOUNCE_SECONDS)
                raw = await self._backend.stream(stream_id)
        except BackendUnavailable as exc:
            raise LimitsUnavailable("the stream registry is unavailable; try again shortly", retry_after=1) from exc
        if raw is None:
            raise StreamNotFound(f"no open stream {stream_id!r}")
        return decode_record(raw)

    async def stop(self, stream_id: str, reason: StopReason, *, owner: str | None = None) -> tuple[bool, StreamRecord]:
        """Stop a stream on whichever replica runs it: whether it ended within `STOP_WAIT_SECONDS`, and its
        record. With `owner` (a client stopping its own), another principal's stream is 404, like an unknown one."""
        record = await self.stream(stream_id)
        stream_id = record.id
        if owner is not None and record.owner != owner_digest(owner):
            raise StreamNotFound(f"no open stream {stream_id!r}")
        if record.replica == self._registry.replica:
            self._registry.stop(stream_id, reason)
            return await self._registry.ended(stream_id, STOP_WAIT_SECONDS), record
        try:
            await self._backend.request_cancel(stream_id, record.replica, reason)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STOP_WAIT_SECONDS
            # The other replica's stream ends there; here, its record's removal is what tells.
            while loop.time() < deadline:
                if await self._backend.stream(stream_id) is None:
                    return True, record
                await asyncio.sleep(STOP_POLL_SECONDS)
        except BackendUnavailable as exc:
            raise LimitsUnavailable("the stream registry is unavailable; try again shortly", retry_after=1) from exc
        return False, record


def shown(record: StreamRecord, *, state: str | None = None) -> dict[str, Any]:
    """A record as the API shows it: without its owner digest."""
    out: dict[str, Any] = msgspec.to_builtins(record)
    out.pop("owner", None)
    if state is not None:
        out["state"] = state
    return out
