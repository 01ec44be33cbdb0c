"""The registry of open streams: one record per stream, on every replica, readable from any of them.

A replica keeps its own open streams here (what they are, how far they got, who watches them) and its heartbeat
writes all of their records to the shared store in the same round trip as their leases, with the same TTL: a
replica that dies (SIGKILL) stops beating, and its records expire with its leases. A record is removed from the
store as part of the stream's own `finish`. Nothing here runs per token: a stream's counters are read when a
record is made, at a beat.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import socket
import time
from collections.abc import Callable
from typing import Literal, Protocol

import msgspec

RECORDS_PER_TURN = 250  # about 3 ms of the loop's time each, on a 2-core VM

Api = Literal["chat", "openai"]
State = Literal["starting", "streaming"]


class Watcher(msgspec.Struct, frozen=True):
    """A client connection attached to a stream."""

    replica: str
    transport: str  # "sse" (/chat/stream), "openai-sse" or "openai-json" (/v1/chat/completions)
    since: float  # epoch seconds


class StreamRecord(msgspec.Struct, frozen=True):
    id: str
    principal: str  # "key:<key id>" or "address": never a key, never an address
    model: str
    provider: str | None  # None until a target answered
    upstream_model: str | None
    api: Api
    replica: str
    started_at: float  # epoch seconds
    first_token_at: float | None
    tokens_out: int  # estimated from the text relayed so far (the provider's count comes at the end)
    state: State
    watchers: tuple[Watcher, ...]
    # Whose stream it is, as a digest of the principal: lets its own client stop it without the record
    # showing an address. Not shown by the admin API.
    owner: str = ""


StopReason = Literal["server_shutdown", "admin", "client"]


class Registered(Protocol):
    """What an open stream tells the registry about itself, and how it is stopped."""

    stream_id: str

    def record(self, replica: str) -> StreamRecord: ...

    def stop(self, reason: StopReason) -> bool: ...


def public_principal(principal: str) -> str:
    """The principal as a record shows it: a key's id, or only the kind for an address (personal data)."""
    return principal if principal.startswith("key:") else "address"


def owner_digest(principal: str) -> str:
    return hashlib.sha256(principal.encode()).hexdigest()[:32]


def estimated_tokens(chars: int) -> int:
    return math.ceil(chars / 4)


def replica_name() -> str:
    """This process, as records and admin filters name it: host and pid (each worker process is a replica)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def epoch(monotonic: float) -> float:
    """A `time.monotonic()` reading as epoch seconds, for records read on other machines."""
    return round(time.time() - (time.monotonic() - monotonic), 3)


class StreamRegistry:
    def __init__(self, replica: str) -> None:
        self.replica = replica
        self._open: dict[str, Registered] = {}
        self._written: set[str] = set()  # records a beat has put in the store
        self._ending: dict[str, asyncio.Event] = {}  # streams someone waits to see end
        self._fresh: list[str] = []  # opened since `fresh_records` last ran
        self.on_add: Callable[[], None] | None = None

    def __len__(self) -> int:
        return len(self._open)

    def add(self, stream: Registered) -> None:
        self._open[stream.stream_id] = stream
        self._fresh.append(stream.stream_id)
        if self.on_add is not None:
            self.on_add()

    def discard(self, stream_id: str) -> bool:
        """Forget a stream that ended; True if its record is in the store (so `finish` must remove it)."""
        self._open.pop(stream_id, None)
        if (ending := self._ending.pop(stream_id, None)) is not None:
            ending.set()
        if stream_id in self._written:
            self._written.discard(stream_id)
            return True
        return False

    def local(self, stream_id: str) -> Registered | None:
        return self._open.get(stream_id)

    def stop(self, stream_id: str, reason: StopReason) -> bool:
        """Stop a stream of this replica; False if it is not here (or ending already)."""
        stream = self._open.get(stream_id)
        return stream is not None and stream.stop(reason)

    async def ended(self, stream_id: str, seconds: float) -> bool:
        """Whether this replica's stream `stream_id` has ended within `seconds`."""
        if stream_id not in self._open:
            return True
        ending = self._ending.setdefault(stream_id, asyncio.Event())
        try:
            async with asyncio.timeout(seconds):
                await ending.wait()
        except TimeoutError:
            return False
        return True

    def fresh_records(self) -> list[tuple[str, bytes]]:
        """The records of streams opened since the last call, still open, that no beat has written yet."""
        fresh, self._fresh = self._fresh, []
        encoded = [
            (stream_id, msgspec.json.encode(stream.record(self.replica)))
            for stream_id in fresh
            if stream_id not in self._written and (stream := self._open.get(stream_id)) is not None
        ]
        self._written.update(stream_id for stream_id, _ in encoded)
        return encoded

    async def records(self) -> list[tuple[str, bytes]]:
        """Every open stream's record, encoded, for the heartbeat to write. Made `RECORDS_PER_TURN` at a time with
        the loop run in between: with 5,000 open streams, all at once held every stream's next token up for 50 to
        100 ms at each beat."""
        streams = list(self._open.items())
        encoded: list[tuple[str, bytes]] = []
        for start in range(0, len(streams), RECORDS_PER_TURN):
            if start:
                await asyncio.sleep(0)
            # A stream that ended meanwhile gets no record; one recorded is marked written in the same turn, so
            # that its `discard` (whenever it comes) knows to remove it from the store.
            part = [
                (stream_id, msgspec.json.encode(stream.record(self.replica)))
                for stream_id, stream in streams[start : start + RECORDS_PER_TURN]
                if stream_id in self._open
            ]
            self._written.update(stream_id for stream_id, _ in part)
            encoded += part
        # Those that ended while later slices were made: their `discard` has run, so no record of theirs goes.
        return [entry for entry in encoded if entry[0] in self._open]


def decode_record(raw: bytes) -> StreamRecord:
    return msgspec.json.decode(raw, type=StreamRecord)
