"""Fixtures shared by every layer of the suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.fake_upstream import FakeUpstream
from tests.support.logs import RecordCollector, collect_logs
from tests.support.redis_server import RedisServer

FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def upstream() -> Iterator[FakeUpstream]:
    """The fake upstream, replaying tests/fixtures/openai/*.sse and anthropic/*.sse (`anthropic_<name>`) by model."""
    transcripts = {p.stem: p.read_bytes() for p in (FIXTURES / "openai").glob("*.sse")}
    transcripts |= {f"anthropic_{p.stem}": p.read_bytes() for p in (FIXTURES / "anthropic").glob("*.sse")}
    fake = FakeUpstream(transcripts).start()
    yield fake
    fake.stop()


@pytest.fixture
def logs() -> Iterator[RecordCollector]:
    with collect_logs() as collector:
        yield collector


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server for the whole session; tests isolate themselves by key prefix."""
    server = RedisServer().start()
    yield server
    server.stop()
