"""When to try an upstream target again, and when to fall back to the next one.

Only failures before the first delta are ever retried: once a client has seen a token, a second upstream would
start the answer over, so a later failure ends the stream with an `error` frame instead.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from app.errors import ProxyError, UpstreamRateLimited, UpstreamRejectedRequest, UpstreamUnavailable
from app.settings import RoutingSettings


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    attempts_per_target: int = 2
    backoff_initial: float = 0.1
    backoff_max: float = 2.0
    retry_after_cap: float = 10.0
    rng: random.Random = field(default_factory=random.Random, compare=False)

    @classmethod
    def from_settings(cls, settings: RoutingSettings) -> RetryPolicy:
        return cls(
            attempts_per_target=settings.attempts_per_target,
            backoff_initial=settings.backoff_initial_ms / 1000,
            backoff_max=settings.backoff_max_ms / 1000,
            retry_after_cap=settings.retry_after_cap_seconds,
        )

    def retry_delay(self, error: ProxyError, attempt: int) -> float | None:
        """Seconds to wait before trying the same target again (`attempt` counts from 0), or None to move on."""
        if attempt + 1 >= self.attempts_per_target:
            return None
        if isinstance(error, UpstreamRateLimited):
            wait = float(error.retry_after or 0)
            return wait if wait <= self.retry_after_cap else None
        if isinstance(error, UpstreamUnavailable):  # refused, reset, 5xx
            # Full jitter: replicas retrying together do not hit the upstream in lockstep.
            return self.rng.uniform(0, min(self.backoff_max, self.backoff_initial * 2**attempt))
        return None  # timeouts, credentials, unknown model: the same target would fail the same way

    @staticmethod
    def falls_back(error: ProxyError) -> bool:
        """Whether another target may succeed where this one failed (a request it rejected as invalid won't)."""
        return not isinstance(error, UpstreamRejectedRequest)
