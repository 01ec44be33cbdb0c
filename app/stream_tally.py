"""`StreamTally`: what one stream used and how it went.

Counted as the stream runs (the characters it relayed, the provider's usage, when its first delta came, its
writes), read by the registry while it runs, settled against the limits at its end, and written in the stream's
one log line: who (the key's id, never the key), what, how it ended, usage and timings.
"""

from __future__ import annotations

import logging
import math
import time

from app.frames import DoneFrame, Usage
from providers.base import TokenUsage

logger = logging.getLogger("tokenrelay.stream")


class StreamTally:
    __slots__ = ("chars", "first_delta_at", "outcome", "prompt_estimate", "served_by", "started", "usage", "writes")

    def __init__(self, prompt_estimate: int) -> None:
        self.prompt_estimate = prompt_estimate
        self.chars = 0  # of the answer relayed: text and tool-call arguments
        self.usage: Usage | None = None  # the provider's own count, when it sent one
        self.first_delta_at: float | None = None
        self.started = time.monotonic()
        self.served_by = "-"
        self.outcome = "disconnected"
        self.writes = 0

    def done(self, finish_reason: str, usage: TokenUsage | None) -> DoneFrame:
        """The `done` frame: with the provider's usage, else an estimate from the characters relayed."""
        if usage is None:
            completion = math.ceil(self.chars / 4)
            total = Usage(self.prompt_estimate, completion, self.prompt_estimate + completion)
            return DoneFrame(finish_reason=finish_reason, usage=total, usage_source="estimated")
        total = Usage(usage.prompt_tokens, usage.completion_tokens, usage.prompt_tokens + usage.completion_tokens)
        self.usage = total
        return DoneFrame(finish_reason=finish_reason, usage=total, usage_source="provider")

    def used_tokens(self) -> int:
        """What the limits are settled with: the provider's count, else the estimate (partial, on cancel or error)."""
        if self.usage is not None:
            return self.usage.total_tokens
        return self.prompt_estimate + math.ceil(self.chars / 4)

    def log_end(self, *, stream_id: str, request_id: str, principal: str, model: str) -> None:
        key_id = principal.removeprefix("key:") if principal.startswith("key:") else "-"
        if self.usage is not None:
            prompt, completion, source = self.usage.prompt_tokens, self.usage.completion_tokens, "provider"
        else:
            prompt, completion = self.prompt_estimate, math.ceil(self.chars / 4)
            source = "estimated" if self.outcome == "done" else "partial"
        ttft = "-" if self.first_delta_at is None else f"{(self.first_delta_at - self.started) * 1000:.1f}"
        logger.info(
            "stream end id=%s request_id=%s key=%s principal=%s model=%s provider=%s outcome=%s "
            "prompt_tokens=%d completion_tokens=%d usage=%s ttft_ms=%s writes=%d seconds=%.3f",
            stream_id, request_id, key_id, principal, model, self.served_by, self.outcome, prompt, completion,
            source, ttft, self.writes, time.monotonic() - self.started,
        )  # fmt: skip
