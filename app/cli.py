"""`tokenrelay serve [--host H] [--port P] [--config FILE] [--workers N]`."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import uvicorn

from app.factory import create_server_app
from app.logs import configure_logging
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
    if server.workers > 1:
        print(
            "tokenrelay: several workers need shared state (Redis), which this version does not support yet; "
            "run one worker per process",
            file=sys.stderr,
        )
        return 2
    configure_logging()
    if args.config:
        # Worker processes re-read the configuration; the environment is how uvicorn hands it to them.
        os.environ[CONFIG_ENV] = args.config
    serve_app(settings)
    return 0


def serve_app(settings: Settings) -> None:
    """Run the server in this process until it is told to stop."""
    uvicorn.run(
        create_server_app(settings),
        host=settings.server.host,
        port=settings.server.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        timeout_graceful_shutdown=settings.server.graceful_shutdown_seconds,
    )


if __name__ == "__main__":
    sys.exit(main())
