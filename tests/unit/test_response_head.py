"""`FastHeadCycle` writes the very bytes uvicorn's own cycle writes, or leaves the head to uvicorn; the head goes
out in one write with the first body.

Both cycles are driven through `send` side by side, each on a transport that records what is written.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from app.connection_state import FlowControl, LazyEvent
from app.response_head import PROVISIONAL, PROVISIONAL_START, FastHeadCycle, encode_head
from app.server import GuardedHttpToolsProtocol

pytestmark = pytest.mark.anyio


class _Recorder:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


def _cycle(kind: type[RequestResponseCycle], method: str, keep_alive: bool) -> tuple[Any, _Recorder]:
    transport = _Recorder()
    cycle = kind(
        scope={"type": "http", "method": method, "path": "/", "headers": []},  # type: ignore[typeddict-item]
        transport=transport,  # type: ignore[arg-type]
        flow=FlowControl(transport),  # type: ignore[arg-type]
        logger=logging.getLogger("test"),
        access_logger=logging.getLogger("test.access"),
        access_log=False,
        default_headers=[(b"date", b"Thu, 03 Dec 2026 21:39:15 GMT")],
        message_event=LazyEvent(),  # type: ignore[arg-type]
        expect_100_continue=False,
        keep_alive=keep_alive,
        on_response=lambda: None,
    )
    return cycle, transport


async def _outcome(kind: type[RequestResponseCycle], method: str, keep_alive: bool, messages: list[Any]) -> Any:
    cycle, transport = _cycle(kind, method, keep_alive)
    try:
        for message in messages:
            await cycle.send(message)
    except Exception as exc:
        await asyncio.sleep(0)  # a head held for a body that never came is written as the loop turns
        return type(exc), b"".join(transport.written)
    await asyncio.sleep(0)
    return b"".join(transport.written), cycle.chunked_encoding, cycle.keep_alive, cycle.response_complete


_NAME = st.sampled_from(
    [b"content-type", b"x-request-id", b"cache-control", b"X-Upper", b"content-length", b"connection",
     b"transfer-encoding", b"x-content-length-ish", b"bad name", b"", b"x-tab\t"]
) | st.binary(min_size=1, max_size=8)  # fmt: skip
_VALUE = st.sampled_from([b"text/event-stream", b"no-cache", b"12", b"chunked", b"close", b"a\r\nb", b"tab\there"]) | (
    st.binary(max_size=12)
)


@settings(max_examples=300, deadline=None)
@given(
    headers=st.lists(st.tuples(_NAME, _VALUE), max_size=6),
    status=st.sampled_from([200, 204, 304, 404, 429, 599]),
    method=st.sampled_from(["GET", "POST", "HEAD"]),
    keep_alive=st.booleans(),
    body=st.sampled_from([b"", b"data: x\n\n"]),
)
def test_the_same_bytes_as_uvicorn(
    headers: list[tuple[bytes, bytes]], status: int, method: str, keep_alive: bool, body: bytes
) -> None:
    messages = [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body, "more_body": False},
    ]

    async def both() -> tuple[Any, Any]:
        return (
            await _outcome(RequestResponseCycle, method, keep_alive, messages),
            await _outcome(FastHeadCycle, method, keep_alive, messages),
        )

    uvicorn, ours = asyncio.run(both())
    assert ours == uvicorn


def test_a_streams_head_takes_the_one_pass() -> None:
    headers = [
        (b"date", b"Thu, 03 Dec 2026 21:39:15 GMT"),
        (b"content-type", b"text/event-stream; charset=utf-8"),
        (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'"),
        (b"x-request-id", b"e42fdb7bc2af44849a0c969aef4f0f12"),
    ]
    head = encode_head(200, headers, keep_alive=True, chunked=True)
    assert head == (
        b"HTTP/1.1 200 OK\r\ndate: Thu, 03 Dec 2026 21:39:15 GMT\r\ncontent-type: text/event-stream; charset=utf-8"
        b"\r\ncontent-security-policy: default-src 'none'; frame-ancestors 'none'\r\n"
        b"x-request-id: e42fdb7bc2af44849a0c969aef4f0f12\r\ntransfer-encoding: chunked\r\n\r\n"
    )


@pytest.mark.parametrize(
    "headers",
    [
        [(b"content-length", b"2")],
        [(b"Content-Type", b"text/plain")],
        [(b"x-injected", b"a\r\nset-cookie: b")],
        [(b"x-nul", b"a\x00b")],
    ],
)
def test_what_uvicorn_acts_on_or_refuses_is_left_to_it(headers: list[tuple[bytes, bytes]]) -> None:
    assert encode_head(200, headers, keep_alive=True, chunked=True) is None


async def test_a_pipelined_cycle_is_adopted_with_what_it_received() -> None:
    cycle, _ = _cycle(RequestResponseCycle, "POST", True)
    cycle.body += b'{"a": 1}'
    cycle.more_body = False
    cycle.message_event.set()
    own = FastHeadCycle.adopt(cycle)
    assert (bytes(own.body), own.more_body, own.message_event.is_set()) == (b'{"a": 1}', False, True)
    assert await own.receive() == {"type": "http.request", "body": b'{"a": 1}', "more_body": False}


@pytest.mark.parametrize("method", ["POST", "HEAD"])
@pytest.mark.parametrize("status", [200, 204, 304, 429])
@pytest.mark.parametrize("keep_alive", [True, False])
async def test_every_framing_of_a_one_pass_head_matches_uvicorn(method: str, status: int, keep_alive: bool) -> None:
    headers = [(b"content-type", b"application/json"), (b"x-ratelimit-limit", b"60"), (b"referrer-policy", b"x\ty")]
    assert encode_head(status, headers, keep_alive=keep_alive, chunked=True) is not None
    messages = [
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": b"", "more_body": False},
    ]
    ours = await _outcome(FastHeadCycle, method, keep_alive, messages)
    assert ours == await _outcome(RequestResponseCycle, method, keep_alive, messages)


async def test_the_head_leaves_with_the_first_body_in_one_write() -> None:
    cycle, transport = _cycle(FastHeadCycle, "POST", True)
    await cycle.send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    assert transport.written == []
    await cycle.send({"type": "http.response.body", "body": b"first", "more_body": True})
    assert len(transport.written) == 1
    assert transport.written[0].endswith(b"\r\n\r\n5\r\nfirst\r\n")
    await cycle.send({"type": "http.response.body", "body": b"", "more_body": False})
    assert transport.written[1:] == [b"0\r\n\r\n"]


async def test_a_head_with_no_body_in_its_turn_goes_out_at_the_turns_end() -> None:
    """A stream committed before its first token: the client must have its 200 without waiting for one."""
    cycle, transport = _cycle(FastHeadCycle, "POST", True)
    await cycle.send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await asyncio.sleep(0)
    assert len(transport.written) == 1
    assert transport.written[0].startswith(b"HTTP/1.1 200 OK\r\n")
    await cycle.send({"type": "http.response.body", "body": b"later", "more_body": True})
    assert transport.written[1] == b"5\r\nlater\r\n"


def test_uvicorn_starts_every_request_through_the_hook_that_adopts_its_cycle() -> None:
    """`GuardedHttpToolsProtocol` makes each cycle a `FastHeadCycle` in `_start_asgi_task`: a uvicorn that
    started requests another way would silently serve them on its own cycle (and its `asyncio.Event`)."""
    assert "_start_asgi_task" in vars(GuardedHttpToolsProtocol)
    for caller in (HttpToolsProtocol.on_headers_complete, HttpToolsProtocol.on_response_complete):
        assert "self._start_asgi_task(" in inspect.getsource(caller)


def _start(headers: list[tuple[bytes, bytes]], status: int = 200, *, provisional: bool = False) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "http.response.start", "status": status, "headers": headers}
    if provisional:
        message[PROVISIONAL] = True
    return message


@settings(max_examples=200, deadline=None)
@given(
    earlier=st.lists(
        st.tuples(st.lists(st.tuples(_NAME, _VALUE), max_size=3), st.sampled_from([200, 502])), max_size=2
    ),
    headers=st.lists(st.tuples(_NAME, _VALUE), max_size=4),
    status=st.sampled_from([200, 204, 429]),
    final_provisional=st.booleans(),
    method=st.sampled_from(["POST", "HEAD"]),
    keep_alive=st.booleans(),
)
def test_provisional_starts_write_what_the_last_start_alone_writes(
    *,
    earlier: list[tuple[list[tuple[bytes, bytes]], int]],
    headers: list[tuple[bytes, bytes]],
    status: int,
    final_provisional: bool,
    method: str,
    keep_alive: bool,
) -> None:
    """Starts given provisionally and then replaced leave no trace; a provisional start that a body follows is
    written as if it had been an ordinary one."""
    body = {"type": "http.response.body", "body": b"data: x\n\n", "more_body": False}
    ours = [
        *(_start(h, s, provisional=True) for h, s in earlier),
        _start(headers, status, provisional=final_provisional),
    ]

    async def both() -> tuple[Any, Any]:
        return (
            await _outcome(RequestResponseCycle, method, keep_alive, [_start(headers, status), body]),
            await _outcome(FastHeadCycle, method, keep_alive, [*ours, body]),
        )

    uvicorn, own = asyncio.run(both())
    assert own == uvicorn


async def test_a_provisional_start_writes_nothing_until_its_body_and_then_one_write() -> None:
    cycle, transport = _cycle(FastHeadCycle, "POST", True)
    await cycle.send(_start([(b"content-type", b"text/event-stream")], provisional=True))
    await asyncio.sleep(0)
    assert transport.written == []
    assert not cycle.response_started  # uvicorn still owes the client a response if the app ends here
    await cycle.send({"type": "http.response.body", "body": b"first", "more_body": True})
    assert len(transport.written) == 1
    assert transport.written[0].startswith(b"HTTP/1.1 200 OK\r\n")
    assert transport.written[0].endswith(
        b"content-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n5\r\nfirst\r\n"
    )


async def test_a_provisional_start_committed_after_keep_alive_ended_says_so() -> None:
    """Between the provisional start and its body, uvicorn may decide the connection closes after this response
    (a shutdown): the head written is the one uvicorn would write then."""
    cycle, transport = _cycle(FastHeadCycle, "POST", True)
    reference, expected = _cycle(RequestResponseCycle, "POST", False)
    await cycle.send(_start([(b"content-type", b"text/plain")], provisional=True))
    cycle.keep_alive = False
    for each in (cycle, reference):
        if each is reference:
            await each.send(_start([(b"content-type", b"text/plain")]))
        await each.send({"type": "http.response.body", "body": b"x", "more_body": False})
    assert b"".join(transport.written) == b"".join(expected.written)
    assert b"connection: close\r\n" in transport.written[0]


async def test_a_client_gone_before_the_body_gets_nothing() -> None:
    cycle, transport = _cycle(FastHeadCycle, "POST", True)
    await cycle.send(_start([(b"content-type", b"text/plain")], provisional=True))
    cycle.disconnected = True
    await cycle.send({"type": "http.response.body", "body": b"x", "more_body": False})
    await asyncio.sleep(0)
    assert transport.written == []


async def test_an_app_that_ends_after_only_a_provisional_start_gets_uvicorns_500() -> None:
    cycle, transport = _cycle(FastHeadCycle, "POST", True)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send(_start([(b"content-type", b"text/plain")], provisional=True))

    await cycle.run_asgi(app)
    await asyncio.sleep(0)
    assert b"".join(transport.written).startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


def test_an_adopted_cycle_offers_provisional_starts() -> None:
    cycle, _ = _cycle(RequestResponseCycle, "POST", True)
    assert PROVISIONAL_START in FastHeadCycle.adopt(cycle).scope["extensions"]
