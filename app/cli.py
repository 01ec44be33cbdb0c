"""`tokenrelay serve [--host H] [--port P] [--config FILE] [--workers N]`, `tokenrelay --version`."""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from collections.abc import Sequence

from app.backends.redis import redacted_url
from app.logs import configure_logging
from app.redaction import Redactor
from app.server import serve
from app.settings import CONFIG_ENV, ConfigError, Settings, config_path, load_settings

LOOPBACK_HOSTS = ("127.0.0.1", "::1", "localhost")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tokenrelay", description="LLM token-streaming proxy")
    parser.add_argument("--version", action="version", version=f"tokenrelay {version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_command = commands.add_parser("serve", help="run the proxy")
    serve_command.add_argument("--host", help="address to bind (default: server.host from the config)")
    serve_command.add_argument("--port", type=int, help="port to bind (default: server.port from the config)")
    serve_command.add_argument("--config", help=f"configuration file (default: ${CONFIG_ENV}, else ./config.yaml)")
    serve_command.add_argument("--workers", type=int, help="worker processes (default: server.workers)")
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
    source = config_path(args.config, os.environ)
    log_startup(settings, str(source) if source else "(embedded defaults)")
    if args.config:
        # Worker processes re-read the configuration; the environment is how uvicorn hands it to them.
        os.environ[CONFIG_ENV] = args.config
    serve(settings)
    return 0


def version() -> str:
    try:
        return importlib.metadata.version("tokenrelay")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def log_startup(settings: Settings, source: str) -> None:
    """One line an operator reads first, then a warning for each way this server is more open than it looks."""
    logger = logging.getLogger("tokenrelay")
    server, auth = settings.server, settings.auth
    if auth.keys:
        mode = f"keys ({len(auth.keys)})"
    elif auth.open:
        mode = "open (no keys: every client is served)"
    else:
        mode = "protected (no keys: loopback clients only)"
    state = f"redis {redacted_url(settings.state.redis_url)}" if settings.state.redis_url else "memory (this process)"
    logger.info(
        "tokenrelay %s config=%s listen=%s:%d workers=%d models=%s default_model=%s auth=%s state=%s",
        version(), source, server.host, server.port, server.workers, ",".join(settings.models),
        settings.default_model, mode, state,
    )  # fmt: skip
    beyond_loopback = server.host not in LOOPBACK_HOSTS
    if not auth.keys and auth.open:
        logger.warning("auth.open is true: every client that can reach %s is served without a key", server.host)
    elif not auth.keys and beyond_loopback:
        logger.warning(
            "protected mode: listening on %s with no auth.keys, so clients beyond this machine get 403; "
            "configure auth.keys, or set auth.open: true to serve them without a key",
            server.host,
        )


if __name__ == "__main__":
    sys.exit(main())
