"""Helpers for resume tests: a config for tokenrelay processes before the fake upstream, and a client that reads
a stream's frames, drops the connection, and comes back with `Last-Event-ID` as EventSource does."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.support.whatwg_sse import DispatchedEvent, WhatwgParser

KEY = "resume-key-0123456789abcdef"
OTHER_KEY = "other-key-0123456789abcdef"
AUTH = {"authorization": f"Bearer {KEY}"}
OTHER = {"authorization": f"Bearer {OTHER_KEY}"}
ADMIN_KEY = "resume-admin-0123456789abcdef"
ADMIN = {"authorization": f"Bearer {ADMIN_KEY}"}


def upstream_text(n: int) -> str:
    """The whole answer of the fake upstream's `gen?n=<n>` (bench/fake_upstream.py)."""
    return "".join(f" t{i}" for i in range(n))


def resume_config(
    tmp_path: Path,
    upstream_url: str,
    *,
    redis_url: str = "",
    n: int = 60,
    gap_ms: int = 10,
    grace: float = 10,
    retention: float = 300,
    max_bytes: int = 1_048_576,
    ttl: float = 30,
    retry_ms: int = 3000,
    auth: bool = True,
    flush_ms: int = 20,
    first_ms: int = 0,
    ping_seconds: float = 15,
) -> tuple[Path, str]:
    """A config whose model `story` is a fresh upstream model (counted on its own by the fake upstream); returns
    the file and that upstream model's name."""
    tag = uuid.uuid4().hex[:8]
    upstream_model = f"gen?n={n}&gap_ms={gap_ms}&first_ms={first_ms}&tag={tag}"
    keys = ""
    if auth:
        digests = [hashlib.sha256(k.encode()).hexdigest() for k in (KEY, OTHER_KEY)]
        admin = hashlib.sha256(ADMIN_KEY.encode()).hexdigest()
        keys = (
            f"auth:\n  keys: [{{id: client, sha256: {digests[0]}}}, {{id: other, sha256: {digests[1]}}}]\n"
            f"  admin_keys: [{{id: ops, sha256: {admin}}}]\n"
        )
    state = f"state: {{redis_url: '{redis_url}', key_prefix: 'resume-{tag}:'}}\n" if redis_url else ""
    path = tmp_path / f"resume-{tag}.yaml"
    path.write_text(
        f"providers:\n  fake: {{type: openai, base_url: '{upstream_url}', api_key: sk-test}}\n"
        f"models:\n  story: {{provider: fake, model: '{upstream_model}'}}\n"
        f"{keys}"
        f"limits: {{requests_per_minute: 0, concurrent_streams: 0, lease_ttl_seconds: {ttl}}}\n"
        f"stream:\n  retry_ms: {retry_ms}\n  ping_interval_seconds: {ping_seconds}\n"
        f"  resume: {{grace_seconds: {grace}, retention_seconds: {retention}, "
        f"max_bytes: {max_bytes}, flush_interval_ms: {flush_ms}}}\n"
        f"{state}"
    )
    return path, upstream_model


@dataclass
class Read:
    status: int
    events: list[DispatchedEvent] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @property
    def last_id(self) -> str:
        return self.events[-1].last_event_id

    @property
    def seqs(self) -> list[int]:
        return [int(e.last_event_id.rsplit(".", 1)[1]) for e in self.events]

    def text(self) -> str:
        return "".join(json.loads(e.data)["text"] for e in self.events if e.type == "token")


async def read(
    client: httpx.AsyncClient,
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: Any = None,
    at_least: int | None = None,
    following: asyncio.Event | None = None,
) -> Read:
    """The frames of a stream: all of them, or (`at_least`) the first read that holds that many, then the
    connection is dropped. `following` is set once the first frame has arrived."""
    parser = WhatwgParser()
    async with client.stream(method, url, headers=headers, json=body) as response:
        if response.status_code != 200:
            return Read(response.status_code, headers=dict(response.headers), body=await response.aread())
        result = Read(200, headers=dict(response.headers))
        async for chunk in response.aiter_raw():
            result.events += parser.feed(chunk)
            if following is not None and result.events:
                following.set()
            if at_least is not None and len(result.events) >= at_least:
                break
    return result


def assert_one_ending(events: list[DispatchedEvent]) -> None:
    kinds = [e.type for e in events]
    assert kinds[0] == "start", kinds
    endings = [k for k in kinds if k in ("done", "error", "cancel")]
    assert endings == [kinds[-1]], kinds


def assert_seamless(first: Read, rest: Read) -> None:
    """Two reads of one stream, the second resumed from the first's last id: no duplicate, no gap."""
    seqs = first.seqs + rest.seqs
    assert seqs == list(range(len(seqs))), seqs
    assert_one_ending(first.events + rest.events)
