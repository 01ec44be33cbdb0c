"""What an operator sees when `tokenrelay serve` starts: one summary line, clear warnings, never a traceback."""

from __future__ import annotations

import re
import resource
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.processes import served, tokenrelay_command

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


def test_one_startup_line_says_what_runs(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        ECHO
        + "  other: {type: echo}\nmodels:\n  first: {provider: echo, model: a}\n  second: {provider: other, model: b}\n"
        "auth: {open: true}\n"
    )
    with served(config) as proxy:
        log = proxy.log()
    line = next(x for x in log.splitlines() if "tokenrelay " in x and "config=" in x)
    assert re.search(r"tokenrelay \d+\.\d+\.\d+ ", line), line
    assert f"config={config}" in line
    assert f"listen=127.0.0.1:{proxy.port}" in line
    assert "models=first,second default_model=first" in line
    assert "auth=open" in line
    assert "state=memory" in line
    assert any("WARNING" in x and "auth.open is true" in x for x in log.splitlines()), log


def test_version() -> None:
    result = subprocess.run(
        [*tokenrelay_command(), "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0
    assert re.fullmatch(r"tokenrelay \d+\.\d+\.\d+\n", result.stdout), result.stdout


def test_serve_raises_its_open_files_limit_to_the_hard_limit(tmp_path: Path) -> None:
    """Each open stream holds two descriptors: a soft limit of 1,024 would cap a replica at a few hundred."""
    config = tmp_path / "config.yaml"
    config.write_text(ECHO)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256

    def lower_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    with served(config, preexec_fn=lower_soft_limit) as proxy:
        limits = Path(f"/proc/{proxy.process.pid}/limits").read_text()
    soft = int(next(line for line in limits.splitlines() if line.startswith("Max open files")).split()[3])
    expected = hard if hard != resource.RLIM_INFINITY else 1 << 20
    assert soft == expected > low
