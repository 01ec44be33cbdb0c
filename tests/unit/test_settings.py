"""Loading `config.yaml`: expansion, unknown keys, bad values, missing variables, the shipped file."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.settings import ConfigError, OpenAIProviderSettings, Settings, load_settings, parse_settings

ROOT = Path(__file__).resolve().parents[2]
ONE_MODEL = "default_model: m\nmodels:\n  m: {provider: up, model: x}\n"


def test_shipped_config_loads_with_no_environment() -> None:
    settings = load_settings(ROOT / "config.yaml", environ={})
    assert settings.default_model == "echo"
    assert settings.providers["echo"].type == "echo"
    openai = settings.providers["openai"]
    assert isinstance(openai, OpenAIProviderSettings)
    assert openai.api_key is None


def test_embedded_defaults_run_the_echo_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}) == Settings()


def test_tokenrelay_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    path.write_text("server:\n  port: 9123\n")
    assert load_settings(environ={"TOKENRELAY_CONFIG": str(path)}).server.port == 9123


@pytest.mark.parametrize(
    ("value", "environ", "expected"),
    [
        ("${KEY}", {"KEY": "sk-1"}, "sk-1"),
        ("${KEY:-fallback}", {}, "fallback"),
        ("${KEY:-fallback}", {"KEY": "set"}, "set"),
        ("Bearer-${KEY}-x", {"KEY": "k"}, "Bearer-k-x"),
        ("${KEY:-}", {}, None),
    ],
)
def test_variable_expansion(value: str, environ: dict[str, str], expected: str | None) -> None:
    text = f'providers:\n  up:\n    type: openai\n    base_url: http://u/v1\n    api_key: "{value}"\n' + ONE_MODEL
    provider = parse_settings(text, environ).providers["up"]
    assert isinstance(provider, OpenAIProviderSettings)
    key = provider.api_key
    assert (key.get_secret_value() if key else None) == expected


def test_expanded_values_are_validated_as_their_type() -> None:
    assert parse_settings("server:\n  port: ${PORT:-8123}\n", {}).server.port == 8123


def test_missing_variable_without_default_names_key_and_variable() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings("server:\n  host: 127.0.0.1\n  port: ${NO_SUCH_PORT}\n", {})
    message = str(info.value)
    assert "config.yaml:3" in message
    assert "server.port" in message
    assert "NO_SUCH_PORT" in message


def test_unknown_key_names_key_and_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings("stream:\n  ping_interval_seconds: 1\n  pingz: 2\n", {})
    assert "config.yaml:3: stream.pingz: unknown key" in str(info.value)


def test_bad_value_inside_a_provider_names_the_key() -> None:
    text = "providers:\n  fast:\n    type: echo\n    tokens_per_second: -5\n"
    with pytest.raises(ConfigError) as info:
        parse_settings(text, {})
    assert "config.yaml:4: providers.fast.tokens_per_second" in str(info.value)


def test_models_must_name_configured_providers() -> None:
    """Regression: reference errors pointed at line 1 of the file, wherever the offending key was."""
    text = "default_model: m\nmodels:\n  other: {provider: echo, model: x}\n  m: {provider: nowhere, model: x}\n"
    with pytest.raises(ConfigError) as info:
        parse_settings(text, {})
    assert "config.yaml:4: models.m.targets.0.provider: 'nowhere' is not a key of providers" in str(info.value)


def test_a_target_list_reference_points_at_its_line() -> None:
    text = "models:\n  m:\n    targets:\n      - {provider: echo, model: x}\n      - {provider: gone, model: y}\n"
    with pytest.raises(ConfigError) as info:
        parse_settings(text, {})
    assert "config.yaml:5: models.m.targets.1.provider" in str(info.value)


def test_default_model_must_exist() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings("server: {port: 8000}\ndefault_model: missing\n", {})
    assert "config.yaml:2: default_model: 'missing' is not a key of models" in str(info.value)


def test_the_first_model_is_the_default_when_none_is_named() -> None:
    models = "models:\n  llama: {provider: up, model: x}\n  other: {provider: up, model: y}\n"
    text = "providers:\n  up: {type: echo}\n" + models
    assert parse_settings(text, {}).default_model == "llama"


def test_the_old_shutdown_key_names_its_replacement() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings("server:\n  port: 8000\n  graceful_shutdown_seconds: 10\n", {})
    assert "config.yaml:3: server.graceful_shutdown_seconds: renamed: write server.drain_seconds" in str(info.value)


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "rediss://user:pw@cache.example:6380", "unix:///run/redis.sock", ""]
)
def test_redis_urls_that_are_accepted(url: str) -> None:
    assert parse_settings(f"state:\n  redis_url: '{url}'\n", {}).state.redis_url == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis://", "localhost"])
def test_a_bad_redis_url_names_the_key_and_line(url: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings(f"server: {{port: 1}}\nstate:\n  redis_url: '{url}'\n", {})
    assert "config.yaml:3: state.redis_url:" in str(info.value)


def test_a_bad_redis_url_never_shows_its_password() -> None:
    with pytest.raises(ConfigError) as info:
        parse_settings("state:\n  redis_url: 'http://user:hunter2-secret@cache:6379'\n", {})
    assert "hunter2-secret" not in str(info.value)


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.default_model = "x"  # type: ignore[misc]


def test_api_key_never_appears_in_repr() -> None:
    text = "providers:\n  up:\n    type: openai\n    base_url: http://u/v1\n    api_key: ${KEY}\n" + ONE_MODEL
    settings = parse_settings(text, {"KEY": "sk-very-secret"})
    assert "sk-very-secret" not in repr(settings)
    assert "sk-very-secret" not in str(settings.model_dump())
