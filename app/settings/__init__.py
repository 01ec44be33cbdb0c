"""Settings: `config.yaml` plus the environment, validated once into one frozen object.

This package is the only code that reads the environment: `load_settings` picks the file (`TOKENRELAY_CONFIG`
names it), `file` parses it and expands `${VAR}` from the environment, `models` holds the frozen models.
Everything else receives a `Settings` through `create_app(settings)`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from app.settings.file import ConfigError, parse_settings
from app.settings.models import *  # noqa: F403 - the models are this package's interface
from app.settings.models import Settings

CONFIG_ENV = "TOKENRELAY_CONFIG"
DEFAULT_CONFIG_FILE = Path("config.yaml")

__all__ = ["CONFIG_ENV", "ConfigError", "config_path", "load_settings", "parse_settings"]


def load_settings(path: Path | str | None = None, environ: Mapping[str, str] | None = None) -> Settings:
    """Load settings from `path`, else `$TOKENRELAY_CONFIG`, else `./config.yaml`, else the embedded defaults."""
    env = os.environ if environ is None else environ
    chosen = config_path(path, env)
    if chosen is None:
        return Settings()
    try:
        text = chosen.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{chosen}: cannot read the configuration file: {exc.strerror}") from exc
    return parse_settings(text, env, source=str(chosen))


def config_path(path: Path | str | None, env: Mapping[str, str]) -> Path | None:
    """The file `load_settings` reads: `path`, else `$TOKENRELAY_CONFIG`, else `./config.yaml`; None: defaults."""
    if path is not None:
        return Path(path)
    named = env.get(CONFIG_ENV)
    if named:
        return Path(named)
    return DEFAULT_CONFIG_FILE if DEFAULT_CONFIG_FILE.is_file() else None
