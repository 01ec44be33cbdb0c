"""A fake OpenAI-compatible upstream on loopback, speaking Chat Completions streaming byte for byte.

The request's `model` chooses the behaviour, so one server serves every test and the benchmark:

    gen?n=64&gap_ms=5&first_ms=20     n content tokens " t0", " t1", ..., finish, usage chunk, [DONE]
    status?code=429&retry_after=3     an error status with OpenAI's JSON error body
    slow_headers?delay_ms=2000        wait before sending any response headers
    cutoff?n=3&mode=clean|abrupt      n tokens, then end the body (clean) or drop the socket (abrupt)
    stall?n=3                         n tokens, then silence until the client leaves
    leak?code=400&shape=json          an error that quotes the request's credentials back (as some servers do):
                                      shape json|text (with status `code`), inband|event (first thing in a 200
                                      stream), midstream (after two tokens)
    <transcript name>                 replay a recorded-shape transcript given to the constructor

Every request is recorded with what it sent and when the upstream saw its connection close, so tests can assert
that the proxy hung up (and how fast) without looking inside the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import itertools
import json
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qsl

CHUNK_ID = "chatcmpl-9fake0000000000000000000000"
CREATED = 1_700_000_000


@dataclass
class RequestRecord:
    model: str
    headers: dict[str, str]
    body: dict[str, object]
    started: float = field(default_factory=time.monotonic)
    closed_at: float | None = None
    finished_at: float | None = None
    closed: threading.Event = field(default_factory=threading.Event)
    # Set when a write to the client waited over 50 ms: the client (the proxy) has stopped reading.
    backpressured: threading.Event = field(default_factory=threading.Event)


def _chunk(model: str, choices: list[dict[str, object]], usage: dict[str, int] | None) -> bytes:
    payload = {
        "id": CHUNK_ID,
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": model,
        "system_fingerprint": "fp_fake",
        "choices": choices,
        "usage": usage,
    }
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def content_chunk(model: str, delta: dict[str, object], finish_reason: str | None = None) -> bytes:
    return _chunk(model, [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}], None)


def usage_chunk(model: str, prompt_tokens: int, completion_tokens: int) -> bytes:
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    return _chunk(model, [], usage)


DONE = b"data: [DONE]\n\n"


def generated_stream(model: str, n: int, pad: int = 0) -> Iterator[bytes]:
    """The events of an `n`-token answer, made lazily: role chunk, tokens, finish, usage, [DONE].

    Token i is `" t<i>"` followed by `pad` "x" characters (large tokens fill buffers fast).
    """
    yield content_chunk(model, {"role": "assistant", "content": "", "refusal": None})
    filler = "x" * pad
    for i in range(n):
        yield content_chunk(model, {"content": f" t{i}{filler}"})
    yield content_chunk(model, {}, "stop")
    yield usage_chunk(model, 7, n)
    yield DONE


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


@functools.lru_cache(maxsize=64)
def _generated(model: str, n: int, pad: int) -> tuple[bytes, ...]:
    return tuple(generated_stream(model, n, pad))


@functools.lru_cache(maxsize=256)
def _groups_of_16(events: tuple[bytes, ...]) -> tuple[bytes, ...]:
    return tuple(b"".join(_chunked(e) for e in events[i : i + 16]) for i in range(0, len(events), 16))


_SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
    b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n"
)
_REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


class FakeUpstream:
    """Run with `start()` (in a thread of its own) or `serve()` (in the running loop)."""

    def __init__(self, transcripts: dict[str, bytes] | None = None) -> None:
        self.transcripts = transcripts or {}
        self.records: list[RequestRecord] = []
        self._arrivals = threading.Condition()
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def records_for(self, model: str) -> list[RequestRecord]:
        return [r for r in self.records if r.model == model]

    def wait_for_request(self, model: str, timeout: float = 5.0) -> RequestRecord:
        """Block until a request for `model` has arrived (call it from a worker thread in async tests)."""
        with self._arrivals:
            if not self._arrivals.wait_for(lambda: self.records_for(model), timeout):
                raise TimeoutError(f"no upstream request for {model!r} within {timeout} s")
            return self.records_for(model)[-1]

    async def serve(self, port: int = 0) -> asyncio.Server:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", port, backlog=4096)
        self.port = self._server.sockets[0].getsockname()[1]
        return self._server

    def start(self) -> FakeUpstream:
        ready = threading.Event()

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.serve())
            ready.set()
            loop.run_forever()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("the fake upstream did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None:
            asyncio.run_coroutine_threadsafe(self.aclose(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(5)
        if self._loop is not None:
            self._loop.close()

    async def aclose(self) -> None:
        """Stop serving and drop every connection (for a server started with `serve()`)."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        await asyncio.sleep(0)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        record: RequestRecord | None = None
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if ":" in line:
                        name, value = line.split(":", 1)
                        headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                payload = json.loads(body) if body else {}
                record = RequestRecord(model=str(payload.get("model", "")), headers=headers, body=payload)
                with self._arrivals:
                    self.records.append(record)
                    self._arrivals.notify_all()
                try:
                    keep_alive = await self._respond(record, reader, writer)
                except ConnectionError:
                    return
                if not keep_alive:
                    return
                record.closed_at = None
                record = None
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.close()
            if record is not None:
                record.closed_at = time.monotonic()
                record.closed.set()

    async def _respond(self, record: RequestRecord, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        name, _, query = record.model.partition("?")
        params = dict(parse_qsl(query))
        model = "fake-model"
        if name == "status":
            code = int(params.get("code", "500"))
            error = {"error": {"message": f"fake upstream error {code}", "type": "fake_error", "code": None}}
            body = json.dumps(error).encode()
            extra = f"retry-after: {params['retry_after']}\r\n" if "retry_after" in params else ""
            writer.write(
                f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\ncontent-type: application/json\r\n{extra}"
                f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
            return True
        if name == "leak":
            return await _leak(record, writer, params)
        if name == "endless":
            return await _endless(record, reader, writer, params)
        if name == "slow_headers":
            await _sleep_or_hangup(reader, float(params.get("delay_ms", "1000")) / 1000)
            if reader.at_eof():
                return False
            name, params = "gen", {"n": "2"}
        events: Iterable[bytes]
        gap = float(params.get("gap_ms", "0")) / 1000
        first = float(params.get("first_ms", "0")) / 1000
        if name in self.transcripts:
            events = [e + b"\n\n" for e in self.transcripts[name].split(b"\n\n") if e.strip()]
        elif name == "gen":
            events = _generated(model, int(params.get("n", "8")), int(params.get("pad", "0")))
        elif name in ("cutoff", "stall"):
            n = int(params.get("n", "3"))
            events = itertools.islice(generated_stream(model, n), 1 + n)
        else:
            events = generated_stream(model, 4)
        writer.write(_SSE_HEAD)
        if first:
            await writer.drain()
            await _sleep_or_hangup(reader, first)
        if not await _write_events(record, reader, writer, events, gap):
            return False
        if name == "stall":
            await writer.drain()
            await _sleep_or_hangup(reader, 3600)
            return False
        if name == "cutoff" and params.get("mode") == "abrupt":
            await writer.drain()
            writer.transport.abort()
            return False
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        record.finished_at = time.monotonic()
        return name != "cutoff"


async def _write_events(
    record: RequestRecord,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    events: Iterable[bytes],
    gap: float,
) -> bool:
    """Write the events, `gap` seconds apart; False when the client hung up first."""
    if gap:
        # One read that returns at the client's hangup for the whole answer, not a task per gap (`wait_for`): at
        # thousands of paced streams the upstream must stay cheap, or it, not the relay, is what is measured.
        hangup = asyncio.ensure_future(reader.read(1))
        try:
            for i, event in enumerate(events):
                if i > 1:
                    await asyncio.wait((hangup,), timeout=gap)
                if reader.at_eof():
                    return False
                writer.write(_chunked(event))
                if writer.transport.get_write_buffer_size():
                    await _drain(writer, record)
            return True
        finally:
            # Over before the body's end is written: once the client has it, its next request may come, and a
            # read still pending would take its first byte (or make the next read raise).
            hangup.cancel()
            await asyncio.wait((hangup,))
    # Full speed, 16 events per write, made once per answer: the upstream must cost next to nothing, or it, not the
    # relay under test, bounds the benchmark.
    for group in _groups_of_16(events if isinstance(events, tuple) else tuple(events)):
        if reader.at_eof():
            return False
        writer.write(group)
        await _drain(writer, record)
    return True


async def _endless(
    record: RequestRecord, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, params: dict[str, str]
) -> bool:
    """`after` tokens (none: not even the role chunk), then one line that never ends (up to 64 MiB), as a broken
    or hostile upstream might send."""
    writer.write(_SSE_HEAD)
    after = int(params.get("after", "0"))
    for event in itertools.islice(generated_stream("fake-model", after), 1 + after if after else 0):
        writer.write(_chunked(event))
    writer.write(_chunked(b"data: "))
    filler = _chunked(b"x" * 65536)
    for _ in range(1024):
        if reader.at_eof():
            return False
        writer.write(filler)
        await _drain(writer, record)
    return False


async def _leak(record: RequestRecord, writer: asyncio.StreamWriter, params: dict[str, str]) -> bool:
    sent = record.headers.get("authorization") or record.headers.get("x-api-key", "")
    quoted = f"invalid request: you sent Authorization: {sent} and x-api-key: {sent}; raw value {sent.split()[-1]}"
    error = {"error": {"message": quoted, "type": "invalid_request_error", "code": "bad_header"}}
    shape, code = params.get("shape", "json"), int(params.get("code", "400"))
    if shape in ("json", "text"):
        body = json.dumps(error).encode() if shape == "json" else quoted.encode()
        kind = "application/json" if shape == "json" else "text/plain"
        writer.write(
            f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\ncontent-type: {kind}\r\n"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        return True
    writer.write(_SSE_HEAD)
    if shape == "midstream":
        for event in itertools.islice(generated_stream("fake-model", 2), 3):
            writer.write(_chunked(event))
    prefix = b"event: error\n" if shape == "event" else b""
    writer.write(_chunked(prefix + b"data: " + json.dumps(error).encode() + b"\n\n") + b"0\r\n\r\n")
    await writer.drain()
    return True


async def _drain(writer: asyncio.StreamWriter, record: RequestRecord) -> None:
    drained = asyncio.ensure_future(writer.drain())
    done, _ = await asyncio.wait([drained], timeout=0.05)
    if not done:
        record.backpressured.set()
    await drained


async def _sleep_or_hangup(reader: asyncio.StreamReader, seconds: float) -> None:
    """Wait `seconds`, or less if the client closes the connection meanwhile (then `reader.at_eof()`)."""
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError, asyncio.IncompleteReadError):
        await asyncio.wait_for(reader.read(1), seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description="fake OpenAI-compatible upstream")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    async def run() -> None:
        upstream = FakeUpstream()
        server = await upstream.serve(args.port)
        print(upstream.port, flush=True)
        async with server:
            await server.serve_forever()

    try:
        import uvloop

        uvloop.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
