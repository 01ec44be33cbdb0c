"""Regressions for the hot-path rewrites: invalid UTF-8 in a relayed chunk, and a batch that never answers."""

from __future__ import annotations

import asyncio

import pytest

from app.backends.coalesce import Coalescer
from app.redaction import Redactor
from providers.openai import _chunk_delta
from providers.upstream_errors import UpstreamErrors

pytestmark = pytest.mark.anyio


def test_invalid_utf8_anywhere_in_a_chunk_is_relayed_as_valid_utf8() -> None:
    """msgspec checks UTF-8 only in the fields it decodes: bytes in `id` would reach the client raw."""
    raw = b'{"id":"\xff","choices":[{"index":0,"delta":{"content":"hi \xfe"}}]}'
    delta = _chunk_delta(raw, UpstreamErrors(Redactor(())))
    assert delta.text == "hi \ufffd"
    (relayed,) = delta.raw
    assert relayed.decode() == '{"id":"\ufffd","choices":[{"index":0,"delta":{"content":"hi \ufffd"}}]}'


async def test_a_batch_answering_too_few_fails_its_callers_instead_of_hanging() -> None:
    async def short(items: list[int]) -> list[int | BaseException]:
        return [1]

    coalescer: Coalescer[int, int] = Coalescer(short)
    async with asyncio.timeout(5):
        results = await asyncio.gather(coalescer(1), coalescer(2), return_exceptions=True)
    assert all(isinstance(r, BaseException) for r in results)


async def test_a_caller_that_left_is_not_sent() -> None:
    sent: list[list[int]] = []

    async def run(items: list[int]) -> list[int | BaseException]:
        sent.append(items)
        return list(items)

    coalescer: Coalescer[int, int] = Coalescer(run)
    leaving = asyncio.ensure_future(coalescer(1))
    staying = asyncio.ensure_future(coalescer(2))
    await asyncio.sleep(0)  # both joined this turn's batch
    leaving.cancel()
    assert await staying == 2
    assert sent == [[2]]
