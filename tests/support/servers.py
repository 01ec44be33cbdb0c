"""Real servers on loopback: the proxy under uvicorn (uvloop + httptools, configured as in production) in a thread."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import uvicorn

from app.factory import create_app
from app.server import server_config
from app.settings import (
    EchoProviderSettings,
    ModelRoute,
    OpenAIProviderSettings,
    ProviderSettings,
    Settings,
    StreamSettings,
    Timeouts,
)
from bench.fake_upstream import FakeUpstream


def proxy_settings(
    upstream: FakeUpstream | None = None,
    *models: str,
    base_url: str | None = None,
    ping_interval: float = 15.0,
    timeouts: Timeouts | None = None,
    max_body_bytes: int = 1024 * 1024,
    limits: Mapping[str, object] | None = None,
    redis_url: str = "",
) -> Settings:
    """Settings whose public model names are the fake upstream's scenario names (see bench/fake_upstream.py)."""
    providers: dict[str, ProviderSettings] = {
        "echo": EchoProviderSettings(type="echo", tokens_per_second=0, first_token_delay_ms=0)
    }
    routes = {"echo": ModelRoute.model_validate({"provider": "echo", "model": "echo"})}
    if upstream is not None or base_url is not None:
        url = base_url or (upstream.base_url if upstream else "")
        providers["fake"] = OpenAIProviderSettings.model_validate(
            {"type": "openai", "base_url": url, "api_key": "sk-test-key", "timeouts": timeouts or Timeouts()}
        )
        routes |= {m: ModelRoute.model_validate({"provider": "fake", "model": m}) for m in models}
    return Settings.model_validate(
        {
            "providers": providers,
            "models": routes,
            "default_model": "echo",
            "stream": StreamSettings(ping_interval_seconds=ping_interval),
            # Limits are off unless a test is about them: other tests make many requests from one address.
            "limits": {
                "max_body_bytes": max_body_bytes,
                "requests_per_minute": 0,
                "concurrent_streams": 0,
                **(limits or {}),
            },
            "state": {"redis_url": redis_url},
        }
    )


@contextmanager
def running_proxy(settings: Settings) -> Iterator[str]:
    """Serve `create_app(settings)` on a free port; yields the base URL. Stops (and drains) on exit."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    # Listening before uvicorn starts: early connections wait in the backlog, so no readiness polling is needed.
    sock.listen(1024)
    port = sock.getsockname()[1]
    # The production server configuration (protocol, timeouts, proxy headers off), on this socket.
    config = server_config(create_app(settings), settings, lifespan="on", timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
        if thread.is_alive():
            raise RuntimeError("the proxy did not shut down within 10 s")


def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` and read until the server closes the connection (bounded by a 10 s socket timeout): for requests
    an HTTP client would refuse to send or would tidy up."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    return received
