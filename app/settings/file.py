"""The text of a configuration file read into `Settings`: `${VAR}` and `${VAR:-default}` in string values are
expanded from the environment given, after YAML parsing (so a secret's characters can never change the
document's structure), and every error names the file, the line and the dotted key."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from app.settings.models import PROVIDER_TAGS, ConfigKeyError, Settings

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, line and key."""


def parse_settings(text: str, environ: Mapping[str, str], *, source: str = "config.yaml") -> Settings:
    """Parse YAML text into `Settings`; every error names `source`, the line and the dotted key."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    lines: dict[tuple[str | int, ...], int] = {}
    if root is not None:
        _record_lines(root, (), lines)
    raw: Any = yaml.safe_load(text) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of keys")
    expanded = _expand(raw, (), environ, lines, source)
    try:
        return Settings.model_validate(expanded)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, lines, source)) from None


def _record_lines(node: yaml.Node, path: tuple[str | int, ...], out: dict[tuple[str | int, ...], int]) -> None:
    out[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = (*path, str(key_node.value))
            out[key] = key_node.start_mark.line + 1
            _record_lines(value_node, key, out)
            out[key] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _record_lines(item, (*path, index), out)


def _expand(
    value: Any,
    path: tuple[str | int, ...],
    environ: Mapping[str, str],
    lines: Mapping[tuple[str | int, ...], int],
    source: str,
) -> Any:
    if isinstance(value, dict):
        return {k: _expand(v, (*path, str(k)), environ, lines, source) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, (*path, i), environ, lines, source) for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value

    def substitute(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in environ:
            return environ[name]
        if default is not None:
            return default
        raise ConfigError(
            f"{_where(path, lines, source)}: {_dotted(path)} needs the environment variable {name}, "
            f"which is not set (write ${{{name}:-default}} to make it optional)"
        )

    return _VAR.sub(substitute, value)


def _describe(exc: ValidationError, lines: Mapping[tuple[str | int, ...], int], source: str) -> str:
    problems = []
    for error in exc.errors():
        loc = _config_path(error["loc"])
        cause = (error.get("ctx") or {}).get("error")
        if isinstance(cause, ConfigKeyError):
            loc = (*loc, *cause.path)
        message = "unknown key" if error["type"] == "extra_forbidden" else error["msg"].removeprefix("Value error, ")
        problems.append(f"{_where(loc, lines, source)}: {_dotted(loc) or '(top level)'}: {message}")
    return "invalid configuration:\n  " + "\n  ".join(problems)


def _config_path(loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    # Pydantic puts the provider's `type` tag into the path of a tagged union: providers.<name>.<tag>.<field>.
    if len(loc) >= 3 and loc[0] == "providers" and loc[2] in PROVIDER_TAGS:
        return (*loc[:2], *loc[3:])
    return loc


def _where(path: tuple[str | int, ...], lines: Mapping[tuple[str | int, ...], int], source: str) -> str:
    candidates = [path]
    if len(path) >= 4 and path[0] == "models" and path[2] == "targets" and path[:3] not in lines:
        candidates.insert(0, (*path[:2], *path[4:]))  # the one-target shorthand: models.<name>.provider
    for candidate in candidates:
        for end in range(len(candidate), 0, -1):
            line = lines.get(candidate[:end])
            if line is not None:
                return f"{source}:{line}"
    line = lines.get(())
    return source if line is None else f"{source}:{line}"


def _dotted(path: tuple[str | int, ...]) -> str:
    return ".".join(str(p) for p in path)
