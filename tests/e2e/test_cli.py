"""`tokenrelay serve` as an operator runs it: a real process, a config file, curl-like requests."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.processes import free_port, tokenrelay_command
from tests.support.whatwg_sse import parse

ROOT = Path(__file__).resolve().parents[2]


tokenrelay = tokenrelay_command


@pytest.fixture
def served(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        "providers:\n  echo:\n    type: echo\n    tokens_per_second: 200\n    first_token_delay_ms: 0\n"
        "models:\n  echo: {provider: echo, model: echo}\n"
    )
    process = subprocess.Popen(
        [*tokenrelay(), "serve", "--port", str(port), "--config", str(config)],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TOKENRELAY_CONFIG"},
    )
    drain: threading.Thread | None = None
    try:
        assert process.stdout is not None
        # uvicorn announces readiness on its log; reading it is the event to wait for.
        for line in process.stdout:
            if "Application startup complete" in line:
                break
        else:
            raise AssertionError("tokenrelay serve exited before it was ready")
        # Keep draining its log so that a full pipe can never block the server.
        drain = threading.Thread(target=process.stdout.read, daemon=True)
        drain.start()
        yield f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(15)
        if drain is not None:
            drain.join(5)
        if process.stdout is not None:
            process.stdout.close()


def test_serve_streams_the_readme_curl_request(served: str) -> None:
    response = httpx.get(f"{served}/chat/stream", params={"prompt": "hello"}, timeout=10)
    assert response.status_code == 200
    events = parse(response.content).events
    kinds = [e.type for e in events]
    assert (kinds[0], kinds[-1]) == ("start", "done")
    assert "".join(json.loads(e.data)["text"] for e in events if e.type == "token") == "Echo: hello"


def test_a_bad_config_stops_startup_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("server:\n  port: 8000\n  prot: 1\n")
    result = subprocess.run(
        [*tokenrelay(), "serve", "--config", str(config)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 2
    assert "config.yaml:3: server.prot: unknown key" in result.stderr


def test_several_workers_without_shared_state_are_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [*tokenrelay(), "serve", "--workers", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "workers" in result.stderr


def test_auth_off_beyond_loopback_warns_at_startup(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("providers:\n  echo: {type: echo}\nmodels:\n  echo: {provider: echo, model: echo}\n")
    process = subprocess.Popen(
        [*tokenrelay(), "serve", "--host", "0.0.0.0", "--port", str(free_port()), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "TOKENRELAY_CONFIG"},
    )
    assert process.stdout is not None
    seen = []
    try:
        for line in process.stdout:
            seen.append(line)
            if "Application startup complete" in line:
                break
    finally:
        process.terminate()
        process.wait(15)
        process.stdout.close()
    assert any("protected mode" in line and "0.0.0.0" in line for line in seen), seen
