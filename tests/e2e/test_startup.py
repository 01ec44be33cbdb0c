"""What an operator sees when `tokenrelay serve` starts: one summary line, clear warnings, never a traceback."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.support.processes import served

ECHO = "providers:\n  echo: {type: echo, tokens_per_second: 0, first_token_delay_ms: 0}\n"


@pytest.mark.parametrize(("policy", "level"), [("fail_open", "WARNING"), ("fail_closed", "ERROR")])
def test_an_unreachable_redis_at_startup_is_one_clear_line(tmp_path: Path, policy: str, level: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        ECHO
        + f"state: {{redis_url: 'redis://:hunter2-secret@127.0.0.1:9/0'}}\nlimits: {{on_backend_failure: {policy}}}\n"
    )
    with served(config) as proxy:
        response = httpx.post(f"{proxy.base}/chat/stream", json={"prompt": "hi"}, timeout=10)
        log = proxy.log()
    assert any(level in line and "Redis at redis://:***@127.0.0.1:9/0" in line for line in log.splitlines()), log
    assert "Traceback" not in log
    assert "hunter2-secret" not in log
    assert response.status_code == (200 if policy == "fail_open" else 503)


def test_query_strings_and_keys_in_urls_never_reach_the_log(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(ECHO)
    with served(config) as proxy:
        ok = httpx.get(f"{proxy.base}/chat/stream", params={"prompt": "secret-words"}, timeout=10)
        keyed = httpx.get(
            f"{proxy.base}/chat/stream",
            params={"prompt": "secret-words", "api_key": "sk-pasted-0123456789"},
            timeout=10,
        )
        # The access line of the last request is the event to wait for.
        log = "".join(proxy.wait_for_lines(lambda lines: sum('"GET /chat/stream HTTP/1.1"' in x for x in lines) >= 2))
    assert ok.status_code == 200
    assert keyed.status_code == 400
    assert keyed.json()["error"]["field"] == "api_key"
    assert '"GET /chat/stream HTTP/1.1" 200' in log
    assert "secret-words" not in log
    assert "pasted" not in log
