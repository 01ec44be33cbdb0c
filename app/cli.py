"""`tokenrelay serve [--host H] [--port P] [--config FILE] [--workers N]`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from app.factory import create_server_app
from app.logs import configure_logging
from app.redaction import Redactor
from app.settings import CONFIG_ENV, ConfigError, Settings, load_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenrelay", description="LLM token-streaming proxy")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("--host", help="address to bind (default: server.host from the config)")
    serve.add_argument("--port", type=int, help="port to bind (default: server.port from the config)")
    serve.add_argument("--config", help=f"configuration file (default: ${CONFIG_ENV}, else ./config.yaml)")
    serve.add_argument("--workers", type=int, help="worker processes (default: server.workers)")
    args = parser.parse_args(argv)

    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"tokenrelay: {exc}", file=sys.stderr)
        return 2
    overrides = {k: v for k, v in (("host", args.host), ("port", args.port), ("workers", args.workers)) if v}
    server = settings.server.model_copy(update=overrides)
    settings = settings.model_copy(update={"server": server})
    if server.workers > 1 and not settings.state.redis_url:
        print(
            "tokenrelay: several workers need shared state: set state.redis_url (or REDIS_URL), "
            "or run one worker per process",
            file=sys.stderr,
        )
        return 2
    configure_logging(Redactor.from_settings(settings))
    if not settings.auth.keys and server.host not in ("127.0.0.1", "::1", "localhost"):
        logging.getLogger("tokenrelay").warning(
            "auth is off (no auth.keys configured) and the proxy listens on %s: anyone who can reach it can use it",
            server.host,
        )
    if args.config:
        # Worker processes re-read the configuration; the environment is how uvicorn hands it to them.
        os.environ[CONFIG_ENV] = args.config
    serve_app(settings)
    return 0


def serve_app(settings: Settings) -> None:
    """Run the server in this process (one worker) or in `server.workers` worker processes, until stopped."""
    server = settings.server
    options: dict[str, Any] = {
        "host": server.host,
        "port": server.port,
        "loop": "uvloop",
        "http": "httptools",
        "log_config": None,
        # tokenrelay's own drain (app/shutdown.py) has ended every stream before uvicorn hears the signal: what
        # uvicorn still waits for is at most a short non-stream request.
        "timeout_graceful_shutdown": 1,
        "timeout_keep_alive": server.keepalive_seconds,
        # X-Forwarded-For is judged by limits.trusted_proxies alone; uvicorn would otherwise trust 127.0.0.1.
        "proxy_headers": False,
    }
    if server.workers > 1:
        # Each worker builds its own app from the same configuration file (a factory, by import path).
        uvicorn.run("app.factory:create_app_from_environment", factory=True, workers=server.workers, **options)
    else:
        uvicorn.run(create_server_app(settings), **options)


if __name__ == "__main__":
    sys.exit(main())
