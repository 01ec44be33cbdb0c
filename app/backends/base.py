"""The state a proxy shares between requests, and between replicas when Redis serves it.

Three kinds of limit, each decided in one atomic step (one Lua script in Redis, never get-then-set):
- `hit`: requests per window, by GCRA (a sliding window that stores one timestamp per key, not every request);
- `acquire` / `assert_leases` / `release`: concurrent leases (one per open stream) that expire unless asserted
  again, so a crashed worker's streams stop counting after `ttl`, and a store that lost them has them back at the
  next heartbeat;
- `reserve` / `settle`: a token budget per window; admission reserves an estimate, the end settles the real count
  (a refund when it used less).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol


class BackendUnavailable(Exception):
    """The shared store could not be reached; the caller decides to fail open or closed."""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_after: float  # seconds until the limit has room again (for X-RateLimit-Reset and Retry-After)


class Backend(Protocol):
    async def open(self) -> None: ...

    async def aclose(self) -> None: ...

    async def ping(self) -> None:
        """Raise `BackendUnavailable` unless the store answers now (the startup check)."""
        ...

    async def hit(self, key: str, limit: int, window: float) -> Decision:
        """Count one request against `limit` per `window` seconds."""
        ...

    async def acquire(self, key: str, lease: str, limit: int, ttl: float) -> Decision:
        """Take one of `limit` concurrent leases, held for `ttl` seconds unless renewed."""
        ...

    async def assert_leases(self, leases: Iterable[tuple[str, str]], ttl: float) -> None:
        """Hold each `(key, lease)` for `ttl` seconds more, adding back any the store lost (one round trip)."""
        ...

    async def release(self, key: str, lease: str) -> None: ...

    async def reserve(self, key: str, amount: int, limit: int, window: float) -> Decision:
        """Reserve `amount` of a budget of `limit` per `window` seconds."""
        ...

    async def settle(self, key: str, reserved: int, actual: int, limit: int, window: float) -> None:
        """Replace a reservation by what was really used."""
        ...
