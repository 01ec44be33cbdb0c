"""Resume: a client that holds a stream's frames up to a seq gets the rest, from any replica.

The resume point comes from `Last-Event-ID: <stream_id>.<seq>` (EventSource sends the id of the last frame it
got by itself) or `?after=<seq>` on `GET /chat/streams/{id}`; the header wins. It is untrusted input: over 128
bytes, a control character, or not the shape tokenrelay's ids have is a 400 naming the field. What answers:
- the stream's log on this replica, while it runs and for the retention time after (`StreamLogs`);
- else the shared store's copy of the log (`LogReader`), which other replicas write.
Unknown, expired and another principal's streams are all `404 stream_not_found`, so an id leaks nothing; a
resume from frames the log no longer holds is `410 stream_truncated`; a finished stream with nothing after the
point is `None` (the route answers 204, and EventSource stops for good).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Protocol

from litestar.types import ASGIApp

from app.errors import InvalidRequest, StreamNotFound, StreamTruncated
from app.frame_log import LogTruncated
from app.keepalive import Pings
from app.registry import owner_digest
from app.resumable import StreamLogs
from app.sse_transport import SSE_HEADERS
from app.watcher import StreamWatcher

MAX_EVENT_ID_BYTES = 128
MAX_SEQ = 10**9
_EVENT_ID = re.compile(r"([A-Za-z0-9_-]{1,64})\.(0|[1-9][0-9]{0,9})")
_STREAM_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_SEQ = re.compile(r"-1|0|[1-9][0-9]{0,9}")


@dataclass(frozen=True, slots=True)
class ResumePoint:
    stream_id: str
    seq: int  # the last frame the client holds; -1: none (watch from the start)


def parse_event_id(value: str) -> ResumePoint:
    """`Last-Event-ID` as a resume point; `InvalidRequest` (400) when it is not one of tokenrelay's ids."""
    if len(value.encode()) > MAX_EVENT_ID_BYTES:
        raise _bad("Last-Event-ID", f"is over {MAX_EVENT_ID_BYTES} bytes")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise _bad("Last-Event-ID", "holds a control character")
    match = _EVENT_ID.fullmatch(value)
    if match is None or int(match.group(2)) > MAX_SEQ:
        raise _bad("Last-Event-ID", "is not an id of this server's streams (<stream_id>.<seq>)")
    return ResumePoint(match.group(1), int(match.group(2)))


def resume_point(stream_id: str, last_event_id: str | None, after: str | None) -> ResumePoint:
    """`GET /chat/streams/{id}`: from `Last-Event-ID` if sent (it must name this stream), else `?after=`, else
    from the start."""
    if _STREAM_ID.fullmatch(stream_id) is None:
        raise StreamNotFound("no such stream")
    if last_event_id:
        point = parse_event_id(last_event_id)
        if point.stream_id != stream_id:
            raise _bad("Last-Event-ID", "names another stream than the URL")
        return point
    if after is None:
        return ResumePoint(stream_id, -1)
    if len(after) > 11 or _SEQ.fullmatch(after) is None or int(after) > MAX_SEQ:
        raise _bad("after", "must be the seq of a frame of this stream (an integer from -1)")
    return ResumePoint(stream_id, int(after))


class LogReader(Protocol):
    """A stream's log as the shared store holds it (written by whichever replica produces the stream)."""

    async def watch(self, point: ResumePoint, owner: str, pings: Pings) -> ASGIApp | None: ...


class ResumeService:
    def __init__(self, logs: StreamLogs, pings: Pings, shared: LogReader | None) -> None:
        self._logs = logs
        self._pings = pings
        self._shared = shared

    async def watch(self, point: ResumePoint, principal: str) -> ASGIApp | None:
        """The watcher that sends what follows `point`, or None when the stream has ended with nothing after it;
        `StreamNotFound`, `StreamTruncated` otherwise."""
        owner = owner_digest(principal)
        stream = self._logs.local(point.stream_id)
        if stream is None or stream.log.status not in (None, 200):
            if self._shared is not None and stream is None:
                return await self._shared.watch(point, owner, self._pings)
            raise StreamNotFound("no such stream (it may have expired)")
        log = stream.log
        if log.owner != owner:
            raise StreamNotFound("no such stream (it may have expired)")
        if log.ended and point.seq >= log.last_seq:
            return None
        try:
            prefix, position = log.position_after(point.seq)
        except LogTruncated:
            raise StreamTruncated(
                f"the stream's log no longer holds the frames after {point.seq}; its oldest is {log.first_seq}"
            ) from None
        return StreamWatcher(
            stream,
            position=position,
            prefix=prefix,
            head=resume_head(point.stream_id),
            pings=self._pings,
            after=point.seq if point.seq > log.last_seq else -1,
        )


def resume_head(stream_id: str) -> list[tuple[bytes, bytes]]:
    return [*SSE_HEADERS, (b"x-tokenrelay-stream-id", stream_id.encode())]


def _bad(field: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{field} {problem}", field=field, status=400)
