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
    with pytest.raises(ConfigError, match="not a key of providers"):
        parse_settings("default_model: m\nmodels:\n  m: {provider: nowhere, model: x}\n", {})


def test_default_model_must_exist() -> None:
    with pytest.raises(ConfigError, match="default_model"):
        parse_settings("default_model: missing\n", {})


def test_settings_are_frozen() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.default_model = "x"  # type: ignore[misc]


def test_api_key_never_appears_in_repr() -> None:
    text = "providers:\n  up:\n    type: openai\n    base_url: http://u/v1\n    api_key: ${KEY}\n" + ONE_MODEL
    settings = parse_settings(text, {"KEY": "sk-very-secret"})
    assert "sk-very-secret" not in repr(settings)
    assert "sk-very-secret" not in str(settings.model_dump())
