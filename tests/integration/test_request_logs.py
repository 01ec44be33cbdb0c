"""Every log line a request causes carries its request id (a contextvar, read where the record is made)."""

from __future__ import annotations

import logging
import re
import socket

import httpx
import pytest

from app.logs import RequestIdFilter
from app.settings import Settings
from tests.support.logs import RecordCollector
from tests.support.servers import running_proxy

pytestmark = pytest.mark.anyio


class Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.addFilter(RequestIdFilter())

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_log_lines_carry_the_request_id() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    settings = Settings.model_validate(
        {
            "providers": {
                "down": {"type": "openai", "base_url": f"http://127.0.0.1:{closed}/v1"},
                "echo": {"type": "echo", "tokens_per_second": 0, "first_token_delay_ms": 0},
            },
            "models": {"m": {"targets": [{"provider": "down", "model": "x"}, {"provider": "echo", "model": "e"}]}},
            "default_model": "m",
            "routing": {"attempts_per_target": 1},
        }
    )
    captured = Captured()
    logger = logging.getLogger("tokenrelay")
    logger.addHandler(captured)
    logger.setLevel(logging.INFO)
    try:
        with running_proxy(settings) as base:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.post(
                    f"{base}/chat/stream", json={"prompt": "hi"}, headers={"X-Request-ID": "trace-logs-1"}
                )
    finally:
        logger.removeHandler(captured)
    assert response.status_code == 200
    mine = [r for r in captured.records if getattr(r, "request_id", None) == "trace-logs-1"]
    messages = [r.getMessage() for r in mine]
    assert any("upstream attempt failed" in m for m in messages), messages
    assert any(m.startswith("stream end") for m in messages), messages
    assert all(getattr(r, "request_id", "-") in ("trace-logs-1", "-") for r in captured.records)


async def test_the_stream_end_line_says_who_what_usage_and_time_to_first_token(logs: RecordCollector) -> None:
    key = "log-line-key-0123456789"
    settings = Settings.model_validate(
        {
            "providers": {"echo": {"type": "echo", "tokens_per_second": 0, "first_token_delay_ms": 0}},
            "models": {"echo": {"provider": "echo", "model": "echo"}},
            "auth": {"keys": [{"id": "team-logs", "key": key}]},
        }
    )
    with running_proxy(settings) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            response = await client.post(
                f"{base}/chat/stream", json={"prompt": "hi there"}, headers={"authorization": f"Bearer {key}"}
            )
        lines = await logs.wait_for(lambda messages: any(m.startswith("stream end") for m in messages))
    assert response.status_code == 200
    line = next(m for m in lines if m.startswith("stream end"))
    assert "key=team-logs" in line
    assert "outcome=done" in line
    assert "usage=provider" in line
    assert re.search(r"prompt_tokens=\d+ completion_tokens=\d+", line), line
    assert re.search(r"ttft_ms=\d+\.\d", line), line
    assert key not in "\n".join(lines)


async def test_each_request_has_one_access_line_once_its_response_is_over_without_its_query_string(
    logs: RecordCollector,
) -> None:
    settings = Settings.model_validate(
        {
            "providers": {"echo": {"type": "echo", "tokens_per_second": 0, "first_token_delay_ms": 0}},
            "models": {"echo": {"provider": "echo", "model": "echo"}},
        }
    )
    with running_proxy(settings) as base:
        async with httpx.AsyncClient(timeout=10) as client:
            streamed = await client.get(
                f"{base}/chat/stream",
                params={"prompt": "my private prompt"},
                headers={"X-Request-ID": "trace-access-1"},
            )
            # A POST stream's start is held until its first token (a provisional start): logged with its status.
            posted = await client.post(f"{base}/chat/stream", json={"prompt": "hi"})
            missing = await client.get(f"{base}/nowhere?token=abc", headers={"X-Request-ID": "trace-access-2"})
            # A decoded path could forge a second log line: the line keeps the path as it came.
            forged = await client.get(f"{base}/x%0A127.0.0.1%20-%20%22GET%20/admin%22%20200")
        messages = await logs.wait_for(lambda seen: sum('HTTP/1.1" ' in m for m in seen) >= 4)
    assert streamed.status_code == 200
    assert posted.status_code == 200
    assert missing.status_code == 404
    assert forged.status_code == 404
    assert any(
        m.startswith('127.0.0.1 - "GET /x%0A127.0.0.1%20-%20%22GET%20/admin%22%20200 HTTP/1.1" 404') for m in messages
    )
    assert not any("\n" in m for m in messages)
    access = [m for m in messages if 'HTTP/1.1" ' in m]
    streamed_lines = [m for m in access if "GET /chat/stream" in m]
    assert any(re.fullmatch(r'127\.0\.0\.1 - "POST /chat/stream HTTP/1\.1" 200 \d+\.\d ms', m) for m in access), access
    assert len(streamed_lines) == 1, access
    assert re.fullmatch(r'127\.0\.0\.1 - "GET /chat/stream HTTP/1\.1" 200 \d+\.\d ms', streamed_lines[0]), access
    stream_end = next(i for i, m in enumerate(messages) if m.startswith("stream end") and "trace-access-1" in m)
    assert messages.index(streamed_lines[0]) > stream_end  # written once the response is over
    assert any(re.fullmatch(r'127\.0\.0\.1 - "GET /nowhere HTTP/1\.1" 404 \d+\.\d ms', m) for m in messages)
    assert "private" not in "\n".join(messages)
    assert "abc" not in "\n".join(messages)


@pytest.mark.parametrize("path", ["/chat/stream", "/v1/chat/completions"])
async def test_a_client_gone_before_its_body_is_whole_is_a_499_not_an_error(logs: RecordCollector, path: str) -> None:
    settings = Settings.model_validate(
        {
            "providers": {"echo": {"type": "echo", "tokens_per_second": 0, "first_token_delay_ms": 0}},
            "models": {"echo": {"provider": "echo", "model": "echo"}},
        }
    )
    with running_proxy(settings) as base:
        port = int(base.rsplit(":", 1)[1])
        head = f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n"
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(head.encode() + b'{"prompt": "half')
        messages = await logs.wait_for(lambda seen: any(f'"POST {path} HTTP/1.1"' in m for m in seen))
    assert any(re.fullmatch(rf'127\.0\.0\.1 - "POST {re.escape(path)} HTTP/1\.1" 499 \d+\.\d ms', m) for m in messages)
    assert not [r for r in logs.records if r.levelno >= logging.WARNING], logs.messages()
