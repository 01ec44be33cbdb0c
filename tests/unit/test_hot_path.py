"""Regressions for the hot-path rewrites: invalid UTF-8 in a relayed chunk, a read's deltas folded together, and a
batch that never answers."""

from __future__ import annotations

import asyncio

import pytest

from app.backends.coalesce import Coalescer
from app.redaction import Redactor
from providers.openai import _chunk_delta, _read
from providers.sse_decoder import ServerSentEvent
from providers.upstream_errors import UpstreamErrors

pytestmark = pytest.mark.anyio


def test_invalid_utf8_anywhere_in_a_chunk_is_relayed_as_valid_utf8() -> None:
    """msgspec checks UTF-8 only in the fields it decodes: bytes in `id` would reach the client raw."""
    raw = b'{"id":"\xff","choices":[{"index":0,"delta":{"content":"hi \xfe"}}]}'
    delta = _chunk_delta(raw, UpstreamErrors(Redactor(())))
    assert delta.text == "hi \ufffd"
    (relayed,) = delta.raw
    assert relayed.decode() == '{"id":"\ufffd","choices":[{"index":0,"delta":{"content":"hi \ufffd"}}]}'


ROLE = b'{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}'
T0 = b'{"choices":[{"index":0,"delta":{"content":" t0"}}]}'
T1 = b'{"choices":[{"index":0,"delta":{"content":" t1"}}]}'
FINISH = b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}'
USAGE = b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}'


def _events(*payloads: bytes) -> list[ServerSentEvent]:
    return [ServerSentEvent("message", p) for p in payloads]


def test_a_reads_contentless_chunks_fold_into_its_text_but_usage_stays_apart() -> None:
    """Role-only and finish-only chunks ride with the text of their read (one write instead of three), every raw
    chunk kept in order; the usage chunk stays a delta of its own, which the `/v1` encoder may drop."""
    pending, failure, done = _read(_events(ROLE, T0, T1, FINISH, USAGE, b"[DONE]"), UpstreamErrors(Redactor(())))
    assert failure is None
    assert done
    assert len(pending) == 2
    answer, usage = pending
    assert (answer.text, answer.finish_reason, answer.usage, answer.raw) == (
        " t0 t1",
        "stop",
        None,
        (ROLE, T0, T1, FINISH),
    )
    assert usage.usage is not None
    assert (usage.text, usage.finish_reason, usage.raw) == ("", None, (USAGE,))


def test_a_usage_chunk_is_never_folded_whatever_its_place() -> None:
    pending, _, _ = _read(_events(T0, USAGE, FINISH), UpstreamErrors(Redactor(())))
    assert [d.raw for d in pending] == [(T0,), (USAGE,), (FINISH,)]


async def test_the_first_call_of_a_turn_goes_alone_and_the_rest_of_the_turn_in_one_batch() -> None:
    sent: list[list[int]] = []

    async def run(items: list[int]) -> list[int | BaseException]:
        sent.append(items)
        return [item * 10 for item in items]

    coalescer: Coalescer[int, int] = Coalescer(run)
    assert await asyncio.gather(*(coalescer(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert sent == [[0], [1, 2, 3, 4]]
    assert await coalescer(5) == 50  # a later turn's first call goes alone again
    assert sent[-1] == [5]


async def test_a_batch_answering_too_few_fails_its_callers_instead_of_hanging() -> None:
    async def short(items: list[int]) -> list[int | BaseException]:
        return [1]

    coalescer: Coalescer[int, int] = Coalescer(short)
    async with asyncio.timeout(5):
        alone, *batched = await asyncio.gather(coalescer(1), coalescer(2), coalescer(3), return_exceptions=True)
    assert alone == 1
    assert all(isinstance(r, BaseException) for r in batched)


async def test_a_caller_that_left_is_not_sent() -> None:
    sent: list[list[int]] = []

    async def run(items: list[int]) -> list[int | BaseException]:
        sent.append(items)
        return list(items)

    coalescer: Coalescer[int, int] = Coalescer(run)
    first = asyncio.ensure_future(coalescer(0))
    leaving = asyncio.ensure_future(coalescer(1))
    staying = asyncio.ensure_future(coalescer(2))
    await asyncio.sleep(0)  # the first went alone; the other two joined this turn's batch
    leaving.cancel()
    assert await staying == 2
    assert await first == 0
    assert sent == [[0], [2]]
