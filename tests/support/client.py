"""Reading a `/chat/stream` response as a browser would (through the WHATWG parser)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.whatwg_sse import DispatchedEvent, ParseResult, WhatwgParser


@dataclass
class StreamResult:
    status: int
    headers: httpx.Headers
    parsed: ParseResult
    body: bytes

    @property
    def events(self) -> list[DispatchedEvent]:
        return self.parsed.events

    @property
    def kinds(self) -> list[str]:
        return [e.type for e in self.parsed.events]

    def data(self, index: int) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.parsed.events[index].data)
        return value

    def text(self) -> str:
        return "".join(json.loads(e.data)["text"] for e in self.events if e.type == "token")


async def post_stream(client: httpx.AsyncClient, base: str, body: dict[str, Any]) -> StreamResult:
    async with client.stream("POST", f"{base}/chat/stream", json=body) as response:
        return await _read(response)


async def get_stream(client: httpx.AsyncClient, base: str, params: dict[str, str]) -> StreamResult:
    async with client.stream("GET", f"{base}/chat/stream", params=params) as response:
        return await _read(response)


async def _read(response: httpx.Response) -> StreamResult:
    parser = WhatwgParser()
    body = b""
    async for chunk in response.aiter_raw():
        body += chunk
        parser.feed(chunk)
    return StreamResult(response.status_code, response.headers, parser.result, body)


def assert_well_formed(result: StreamResult) -> None:
    """start, then deltas, then exactly one terminal frame and nothing after it; ids strictly increasing."""
    kinds = result.kinds
    assert kinds[0] == "start", kinds
    terminals = [i for i, k in enumerate(kinds) if k in ("done", "error", "cancel")]
    assert terminals == [len(kinds) - 1], kinds
    assert set(kinds[1:-1]) <= {"token", "reasoning", "tool_call"}, kinds
    stream_id = result.data(0)["id"]
    seqs = []
    for event in result.events:
        prefix, _, seq = event.last_event_id.rpartition(".")
        assert prefix == stream_id
        seqs.append(int(seq))
    assert seqs == list(range(len(seqs)))
    assert result.parsed.retry is not None
    assert result.body.count(b"retry:") == 1
    assert result.body.endswith(b"\n\n")
