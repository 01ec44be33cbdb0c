"""The state a proxy shares between requests, and between replicas when Redis serves it.

Every decision is one atomic step (one Lua script in Redis, never get-then-set):
- `hit`: one request against a per-window limit, by GCRA (a sliding window that stores one timestamp per key);
- `admit`: everything a stream needs before it goes upstream, all or nothing: a request of the per-window limit,
  a concurrent lease (one per open stream, expiring unless asserted again, so a crashed worker's streams stop
  counting after `ttl`) and a reservation from a token budget per window. A refusal by any one takes nothing;
- `finish`: the end of a stream, in one step: its lease released and the real token count in place of the
  reservation (a refund when it used less);
- `assert_leases` / `release_all`: the heartbeat's renewal (which also puts back leases a restarted store lost)
  and its release of leases whose streams ended meanwhile.

The same store keeps the registry of open streams: one record per stream, written by its replica's heartbeat
(in the same round trip as its leases, with the same TTL, so a dead replica's records expire with its leases) and
removed by `finish`; `streams` and `stream` read them, from any replica.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Literal, Protocol

import msgspec

LimitName = Literal["requests_per_minute", "concurrent_streams", "tokens_per_minute"]


class BackendUnavailable(Exception):
    """The shared store could not be reached; the caller decides to fail open or closed. `maybe_done`: the
    command was sent and its answer lost (a time-out), so it may have run."""

    def __init__(self, message: str, *, maybe_done: bool = False) -> None:
        super().__init__(message)
        self.maybe_done = maybe_done


# msgspec structs, not frozen dataclasses: a frozen dataclass sets each field through `object.__setattr__`, and
# an admission makes four of these (about 5k instructions each; a struct is made in C).
class Decision(msgspec.Struct, frozen=True, gc=False):
    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the limit has room again (for X-RateLimit-Reset and Retry-After)


class Ask(msgspec.Struct, frozen=True, gc=False):
    """What one stream asks for at admission. A limit of 0 is off."""

    requests: int = 0  # per window
    streams: int = 0  # open at once
    lease_ttl: float = 30.0
    tokens: int = 0  # to reserve now
    token_budget: int = 0  # per window
    window: float = 60.0


class Verdict(msgspec.Struct, frozen=True, gc=False):
    """An admission decision. Admitted: `remaining`/`reset_after` describe the request limit (if on). Refused:
    `refused_by` names the first limit that refused and `reset_after` says when it has room."""

    refused_by: LimitName | None
    remaining: int = 0
    reset_after: float = 0.0


class Backend(Protocol):
    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def ping(self) -> None:
        """Raise `BackendUnavailable` unless the store answers now (the startup check)."""
        ...

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        """Count one request against `limit` per `window` seconds."""
        ...

    async def admit(self, key: str, lease: str, ask: Ask) -> Verdict:
        """Take everything `ask` asks for under `key`, with `lease` as the stream's lease id, or nothing."""
        ...

    async def assert_leases(
        self,
        leases: Iterable[tuple[str, str]],
        ttl: float,
        records: Iterable[tuple[str, bytes]] = (),
        replica: str | None = None,
    ) -> list[tuple[str, str]]:
        """Hold each `(key, lease)` for `ttl` seconds more, adding back any the store lost, and write each
        `(stream_id, record)` of the registry to expire after `ttl` (one round trip for all). Returns the
        `(stream_id, reason)` of the cancels asked of `replica` since its last beat (each returned once)."""
        ...

    async def request_cancel(self, stream_id: str, replica: str, reason: str) -> None:
        """Ask the replica that runs `stream_id` to stop it (a message, and an entry its heartbeat reads)."""
        ...

    async def hear_cancels(self, replica: str, on_cancel: Callable[[str, str], None]) -> None:
        """Call `on_cancel(stream_id, reason)` for each cancel sent to `replica`, until cancelled."""
        ...

    async def release_all(self, leases: Iterable[tuple[str, str]], streams: Iterable[str] = ()) -> None:
        """Give back each `(key, lease)` and remove each stream's record, in one round trip."""
        ...

    async def finish(
        self,
        key: str,
        lease: str | None,
        *,
        reserved: int,
        actual: int,
        limit: int,
        window: float,
        stream: str | None = None,
    ) -> None:
        """The end of a stream in one round trip: the lease (if any) given back, the `reserved` tokens (if any)
        replaced by the `actual` count, of a budget of `limit` per `window`, and `stream`'s record removed."""
        ...

    async def streams(self, after: str | None, count: int) -> tuple[list[bytes], str | None]:
        """Up to `count` records of open streams, in id order after the id `after`, and the id to continue
        after (None at the end). Records may come fewer than `count` while there are more."""
        ...

    async def stream(self, stream_id: str) -> bytes | None:
        """One open stream's record."""
        ...
