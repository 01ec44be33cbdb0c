"""The load generator: one asyncio protocol per stream, responses parsed by httptools.

It must cost little beside what it measures, or every path looks alike: no stream reader, no per-event parsing,
only a scan of each body chunk for two markers (the first token, the stream's last token) and the end marker.
Tokens are counted from the answer, not from frames: a stream that ends with its last token and its end marker
carries all `tokens` of them (the fake upstream numbers them ` t0` ... ` t<n-1>`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httptools


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    path: str
    body: bytes  # the JSON request, with `{model}` to fill in
    end_marker: bytes
    headers: str = ""
    pid: int | None = None  # the process whose CPU and memory are the target's (None: the upstream itself)

    def request(self, model: str) -> bytes:
        payload = self.body.replace(b"{model}", model.encode())
        return (
            f"POST {self.path} HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\ncontent-type: application/json\r\n"
            f"{self.headers}content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
        ).encode() + payload


@dataclass(frozen=True)
class Outcome:
    ok: bool
    first_token: float  # seconds from connecting to the first token (0 if none)
    total: float
    longest_gap: float  # the longest silence between two body chunks after the first token
    error: str = ""


class _Stream(asyncio.Protocol):
    def __init__(self, request: bytes, last_token: bytes, end_marker: bytes, done: asyncio.Future[Outcome]) -> None:
        self._request = request
        self._last_token = last_token
        self._end = end_marker
        self._done = done
        self._parser = httptools.HttpResponseParser(self)
        self._started = time.perf_counter()
        self._first = 0.0
        self._last_chunk = 0.0
        self._gap = 0.0
        self._tail = b""
        self._saw_last = False
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        transport.write(self._request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._finish(False, f"bad HTTP: {exc}")

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if status != 200:
            self._finish(False, f"status {status}")

    def on_body(self, body: bytes) -> None:
        now = time.perf_counter()
        window = self._tail + body
        if not self._first:
            if b" t0" in window:
                self._first = now
                self._last_chunk = now
        else:
            self._gap = max(self._gap, now - self._last_chunk)
            self._last_chunk = now
        if not self._saw_last and self._last_token in window:
            self._saw_last = True
        if self._end in window:
            self._finish(self._saw_last, "" if self._saw_last else "ended before its last token")
        self._tail = window[-48:]

    def on_message_complete(self) -> None:
        self._finish(False, "the response ended without its end marker")

    def connection_lost(self, exc: Exception | None) -> None:
        self._finish(False, f"connection lost: {exc}")

    def _finish(self, ok: bool, error: str) -> None:
        if self._done.done():
            return
        now = time.perf_counter()
        first = self._first - self._started if self._first else 0.0
        self._done.set_result(Outcome(ok, first, now - self._started, self._gap, error))
        if self._transport is not None:
            self._transport.close()


async def one_stream(target: Target, model: str, tokens: int) -> Outcome:
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Outcome] = loop.create_future()
    last = f" t{tokens - 1}".encode()
    try:
        await loop.create_connection(
            lambda: _Stream(target.request(model), last, target.end_marker, done), port=target.port, host="127.0.0.1"
        )
    except OSError as exc:
        return Outcome(False, 0.0, 0.0, 0.0, f"connect: {exc}")
    return await done


async def run_concurrent(target: Target, model: str, tokens: int, concurrency: int, per_worker: int) -> list[Outcome]:
    results: list[Outcome] = []

    async def worker() -> None:
        for _ in range(per_worker):
            results.append(await one_stream(target, model, tokens))

    with collector_paused():
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The load generator's own garbage collector off while it measures, and run in full just before: its full
    passes over the bench's heap took 30 to 50 ms, and whichever target was measured then showed them as its
    tail (direct's own c=32 p99 at 49 ms over its p50). The relays' collectors are theirs to pay for."""
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.collect()
        gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
