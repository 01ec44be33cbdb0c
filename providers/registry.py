"""Providers built from settings, and public model names resolved to their ordered targets."""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import ModelNotFound
from app.redaction import Redactor
from app.settings import AnthropicProviderSettings, EchoProviderSettings, Settings, Timeouts
from providers.anthropic import AnthropicProvider
from providers.base import Provider, UpstreamTimeouts
from providers.echo import EchoProvider
from providers.http_client import build_http_client
from providers.openai import OpenAIProvider
from providers.upstream_errors import UpstreamErrors


@dataclass(frozen=True, slots=True)
class Target:
    provider_name: str
    upstream_model: str
    provider: Provider
    timeouts: UpstreamTimeouts | None


@dataclass(frozen=True, slots=True)
class Route:
    public_model: str
    targets: tuple[Target, ...]


class ProviderRegistry:
    """Owns one provider instance (and so one pooled HTTP client) per configured provider."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._providers: dict[str, Provider] = {}
        errors = UpstreamErrors(Redactor.from_settings(settings))
        for name, config in settings.providers.items():
            if isinstance(config, EchoProviderSettings):
                self._providers[name] = EchoProvider(config)
                continue
            http = build_http_client(
                config.http_client,
                max_connections=config.max_connections,
                keepalive_expiry=config.keepalive_expiry_seconds,
            )
            if isinstance(config, AnthropicProviderSettings):
                self._providers[name] = AnthropicProvider(config, http, errors)
            else:
                self._providers[name] = OpenAIProvider(config, http, errors)
        self._routes = {
            public: Route(
                public,
                tuple(
                    Target(t.provider, t.model, self._providers[t.provider], _timeouts(t.timeouts))
                    for t in route.targets
                ),
            )
            for public, route in settings.models.items()
        }

    def resolve(self, public_model: str | None) -> Route:
        name = public_model or self._settings.default_model
        route = self._routes.get(name)
        if route is None:
            raise ModelNotFound(f"unknown model {name!r}; GET /v1/models lists the available ones")
        return route

    def public_models(self) -> list[str]:
        return list(self._routes)

    async def open(self) -> None:
        for provider in self._providers.values():
            await provider.open()

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()


def _timeouts(config: Timeouts | None) -> UpstreamTimeouts | None:
    if config is None:
        return None
    return UpstreamTimeouts(connect=config.connect, first_byte=config.first_byte, read=config.read, pool=config.pool)
