"""The settings' frozen models: every key of `config.yaml`, its default and its validation."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from app.backends.resp import url_problem

REDIS_SCHEMES = ("redis", "rediss", "unix")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ConfigKeyError(ValueError):
    """A value error about a key below the model that found it: `path` leads from that model to the key."""

    def __init__(self, message: str, *path: str | int) -> None:
        super().__init__(message)
        self.path = path


_RENAMED_SERVER_KEYS = {"graceful_shutdown_seconds": "drain_seconds"}


class ServerSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    workers: int = Field(default=1, ge=1)
    drain_seconds: float = Field(default=30, ge=0, description="on SIGTERM, how long open streams may run on")
    header_timeout_seconds: float = Field(default=10, gt=0, description="a request's headers must arrive in this")
    body_timeout_seconds: float = Field(default=30, gt=0, description="a request's body must arrive in this")
    keepalive_seconds: float = Field(default=5, gt=0, description="an idle keep-alive connection is closed after")
    backlog: int = Field(default=4096, ge=1, description="connections the kernel queues before accepting")

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in _RENAMED_SERVER_KEYS.items():
                if old in data:
                    raise ConfigKeyError(f"renamed: write server.{new} instead (see the README, Shutdown)", old)
        return data


class ResumeSettings(_Frozen):
    """Streams as objects that outlive a connection: a log per stream that any replica can replay."""

    enabled: bool = Field(default=True, description="false: GET /chat/stream ends with its connection, as POST does")
    grace_seconds: float = Field(default=10.0, ge=0, description="a resumable stream's life with nobody watching")
    retention_seconds: float = Field(default=300.0, gt=0, description="a finished stream's log, for late resumes")
    max_bytes: int = Field(default=1_048_576, ge=4096, description="per log; older frames are dropped beyond it")
    flush_interval_ms: int = Field(default=50, ge=1, le=5000, description="how often logs are written to Redis")


class StreamSettings(_Frozen):
    ping_interval_seconds: float = Field(default=15.0, gt=0)
    retry_ms: int = Field(default=3000, ge=0)
    resume: ResumeSettings = ResumeSettings()


class LimitSettings(_Frozen):
    """Per principal (API key, else session, else client address). 0 turns a limit off."""

    max_body_bytes: int = Field(default=1024 * 1024, ge=1)
    requests_per_minute: int = Field(default=60, ge=0)
    concurrent_streams: int = Field(default=4, ge=0)
    tokens_per_minute: int = Field(default=0, ge=0)
    lease_ttl_seconds: float = Field(default=30, gt=0, description="an open stream's lease, renewed while it runs")
    on_backend_failure: Literal["fail_open", "fail_closed"] = "fail_open"
    trusted_proxies: tuple[str, ...] = Field(default=(), description="addresses whose X-Forwarded-For is believed")


class KeyLimitSettings(_Frozen):
    """A key's own limits, replacing the defaults under `limits` (0 turns one off)."""

    requests_per_minute: int | None = Field(default=None, ge=0)
    concurrent_streams: int | None = Field(default=None, ge=0)
    tokens_per_minute: int | None = Field(default=None, ge=0)


class ApiKeySettings(_Frozen):
    """One accepted key: `key` (from the environment: `${TEAM_KEY}`) or its `sha256` hex digest, never both.

    `id` names it in logs and limits; the key itself never appears anywhere.
    """

    id: str = Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    key: SecretStr | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")
    models: tuple[str, ...] | None = Field(default=None, description="public models it may use; all if unset")
    limits: KeyLimitSettings = KeyLimitSettings()

    @model_validator(mode="after")
    def _exactly_one_secret(self) -> ApiKeySettings:
        if (self.key is None) == (self.sha256 is None):
            raise ValueError("give exactly one of `key` (from the environment) or `sha256`")
        if self.key is not None and len(self.key.get_secret_value()) < 16:
            raise ValueError("an API key must be at least 16 characters long")
        return self


class AuthSettings(_Frozen):
    """API keys. With none configured only loopback clients are served (protected mode), unless `open` is true."""

    keys: tuple[ApiKeySettings, ...] = ()
    open: bool = Field(default=False, description="with no keys, serve every client, not only loopback ones")
    admin_keys: tuple[ApiKeySettings, ...] = Field(
        default=(), description="keys of the admin API (/admin/*), never client keys; with none, /admin is 404"
    )

    @model_validator(mode="after")
    def _admin_keys_are_not_client_keys(self) -> AuthSettings:
        client_ids = {k.id for k in self.keys}
        if shared := sorted(client_ids & {k.id for k in self.admin_keys}):
            raise ValueError(f"auth.admin_keys: ids {shared} are also client keys (auth.keys); give them other ids")
        return self


class SessionSettings(_Frozen):
    """Server-side sessions (state.redis_url or in-process), the principal of browsers using EventSource."""

    cookie_name: str = Field(default="tokenrelay_session", pattern=r"^[A-Za-z0-9_-]{1,64}$")
    secure: bool = False
    max_age_seconds: int = Field(default=86400, ge=60)
    # Logins per client address, whatever limits.requests_per_minute says: sessions are not free to mint.
    logins_per_minute: int = Field(default=10, ge=1)
    max_sessions: int = Field(default=100_000, ge=1, description="held by the in-process store (no Redis)")


class StateSettings(_Frozen):
    """Where shared state lives: Redis when `redis_url` is set (several workers and replicas), else in-process."""

    redis_url: str = ""
    key_prefix: str = "tokenrelay:"
    redis_timeout_seconds: float = Field(default=0.5, gt=0)
    cancel_messages: bool = Field(
        default=True, description="false (tests): a cancel reaches its replica only through the heartbeat"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value:
            return value
        # The URL may hold a password: the message names its scheme, never the URL.
        scheme, sep, rest = value.partition("://")
        if not sep or scheme not in REDIS_SCHEMES:
            shown = f"{scheme!r}" if sep else "none"
            raise ValueError(f"must start with redis://, rediss:// or unix:// (scheme: {shown})")
        if not rest.strip("/"):
            raise ValueError(f"{scheme}:// needs a host (or, for unix://, a socket path)")
        if (problem := url_problem(value)) is not None:
            raise ValueError(problem)
        return value


class SecurityHeaderSettings(_Frozen):
    """Sent on every response, errors and streams included. An empty value leaves that header out."""

    content_security_policy: str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"
    strict_transport_security: str = "max-age=63072000; includeSubDomains"
    x_frame_options: str = "DENY"
    referrer_policy: str = "no-referrer"
    cross_origin_opener_policy: str = "same-origin"
    cross_origin_resource_policy: str = "same-origin"


class CorsSettings(_Frozen):
    """Cross-origin browser access; none unless origins are listed."""

    allow_origins: tuple[str, ...] = ()
    allow_credentials: bool = False
    allow_methods: tuple[str, ...] = ("GET", "POST", "DELETE", "OPTIONS")
    allow_headers: tuple[str, ...] = (
        "authorization",
        "content-type",
        "x-api-key",
        "x-request-id",
        "x-correlation-id",
        "last-event-id",
    )
    max_age_seconds: int = Field(default=600, ge=0)

    @model_validator(mode="after")
    def _no_wildcard_with_credentials(self) -> CorsSettings:
        if self.allow_credentials and "*" in self.allow_origins:
            raise ValueError("allow_origins '*' cannot be combined with allow_credentials: list the origins")
        return self


class SecuritySettings(_Frozen):
    headers: SecurityHeaderSettings = SecurityHeaderSettings()
    cors: CorsSettings = CorsSettings()


class Timeouts(_Frozen):
    """Upstream timeouts, in seconds. `read` is the longest idle gap allowed between two body chunks."""

    connect: float = Field(default=5.0, gt=0)
    first_byte: float = Field(default=60.0, gt=0)
    read: float = Field(default=120.0, gt=0)
    pool: float = Field(default=5.0, gt=0)


class EchoProviderSettings(_Frozen):
    type: Literal["echo"]
    tokens_per_second: float = Field(default=20.0, ge=0, description="0 streams as fast as possible")
    first_token_delay_ms: float = Field(default=200.0, ge=0)


class _HttpProviderSettings(_Frozen):
    """What every provider that calls an upstream over HTTP shares."""

    base_url: str = Field(pattern=r"^https?://")
    api_key: SecretStr | None = None
    timeouts: Timeouts = Timeouts()
    # One connection per open stream: a cap below what the process can hold (its file descriptors) would queue
    # streams behind it and fail them after `timeouts.pool`. Set it lower to spare an upstream.
    max_connections: int = Field(default=65536, ge=1, description="upstream connections open at once, at most")
    keepalive_expiry_seconds: float = Field(default=15, gt=0, description="an idle upstream connection is closed after")
    http_client: Literal["httptools", "aiohttp", "httpx", "httpx-aiohttp"] = "httptools"
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("base_url")
    @classmethod
    def _strip_trailing_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @field_validator("api_key")
    @classmethod
    def _empty_key_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        # `${OPENAI_API_KEY:-}` expands to "" when unset: that means "send no credentials".
        return value if value is not None and value.get_secret_value() else None


class OpenAIProviderSettings(_HttpProviderSettings):
    """Any OpenAI-compatible Chat Completions server; `base_url` ends before `/chat/completions`."""

    type: Literal["openai"]


class AnthropicProviderSettings(_HttpProviderSettings):
    """The Anthropic Messages API; `base_url` ends before `/v1/messages`."""

    type: Literal["anthropic"]
    base_url: str = Field(default="https://api.anthropic.com", pattern=r"^https?://")
    version: str = "2023-06-01"
    default_max_tokens: int = Field(default=4096, ge=1, description="Anthropic requires max_tokens")


PROVIDER_TAGS = ("echo", "openai", "anthropic")
ProviderSettings = Annotated[
    EchoProviderSettings | OpenAIProviderSettings | AnthropicProviderSettings, Field(discriminator="type")
]


class TargetSettings(_Frozen):
    """One place a public model can be served: a configured provider, its model name, optional own timeouts."""

    provider: str
    model: str
    timeouts: Timeouts | None = None


class ModelRoute(_Frozen):
    """A public model name: targets tried in order (retries, then fallback) until one starts streaming.

    `{provider: p, model: m}` is shorthand for a single target.
    """

    targets: tuple[TargetSettings, ...] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _single_target_shorthand(cls, data: Any) -> Any:
        if isinstance(data, dict) and "targets" not in data and "provider" in data:
            return {"targets": [data]}
        return data


class RoutingSettings(_Frozen):
    """Retries happen only before the first delta reaches the client; never after."""

    attempts_per_target: int = Field(default=2, ge=1)
    backoff_initial_ms: float = Field(default=100, ge=0)
    backoff_max_ms: float = Field(default=2000, ge=0)
    retry_after_cap_seconds: float = Field(default=10, ge=0, description="longer Retry-After: next target")


def _default_providers() -> dict[str, ProviderSettings]:
    return {"echo": EchoProviderSettings(type="echo")}


def _default_models() -> dict[str, ModelRoute]:
    return {"echo": ModelRoute(targets=(TargetSettings(provider="echo", model="echo"),))}


class Settings(_Frozen):
    """The whole configuration. Its defaults alone run the proxy: the echo provider, in-process state."""

    server: ServerSettings = ServerSettings()
    stream: StreamSettings = StreamSettings()
    limits: LimitSettings = LimitSettings()
    routing: RoutingSettings = RoutingSettings()
    security: SecuritySettings = SecuritySettings()
    state: StateSettings = StateSettings()
    auth: AuthSettings = AuthSettings()
    sessions: SessionSettings = SessionSettings()
    providers: dict[str, ProviderSettings] = Field(default_factory=_default_providers)
    models: dict[str, ModelRoute] = Field(default_factory=_default_models)
    default_model: str = Field(default="echo", description="when a request names none; default: the first model")

    @model_validator(mode="before")
    @classmethod
    def _first_model_is_the_default(cls, data: Any) -> Any:
        if isinstance(data, dict) and "default_model" not in data and isinstance(data.get("models"), dict):
            first = next(iter(data["models"]), None)
            if isinstance(first, str):
                return {**data, "default_model": first}
        return data

    @model_validator(mode="after")
    def _check_references(self) -> Settings:
        if self.default_model not in self.models:
            raise ConfigKeyError(f"{self.default_model!r} is not a key of models", "default_model")
        for name, route in self.models.items():
            for i, target in enumerate(route.targets):
                if target.provider not in self.providers:
                    raise ConfigKeyError(
                        f"{target.provider!r} is not a key of providers", "models", name, "targets", i, "provider"
                    )
        return self
