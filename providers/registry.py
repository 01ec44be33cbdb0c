"""Providers built from settings, and public model names resolved to (provider, upstream model)."""

from __future__ import annotations

from dataclasses import dataclass

from app.errors import ModelNotFound
from app.settings import EchoProviderSettings, Settings
from providers.base import Provider
from providers.echo import EchoProvider
from providers.http_client import build_http_client
from providers.openai import OpenAIProvider


@dataclass(frozen=True, slots=True)
class Route:
    public_model: str
    provider_name: str
    upstream_model: str
    provider: Provider


class ProviderRegistry:
    """Owns one provider instance (and so one pooled HTTP client) per configured provider."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._providers: dict[str, Provider] = {}
        for name, config in settings.providers.items():
            if isinstance(config, EchoProviderSettings):
                self._providers[name] = EchoProvider(config)
            else:
                http = build_http_client(config.http_client, max_connections=config.max_connections)
                self._providers[name] = OpenAIProvider(config, http)

    def resolve(self, public_model: str | None) -> Route:
        name = public_model or self._settings.default_model
        target = self._settings.models.get(name)
        if target is None:
            raise ModelNotFound(f"unknown model {name!r}; GET /v1/models lists the available ones")
        return Route(name, target.provider, target.model, self._providers[target.provider])

    async def open(self) -> None:
        for provider in self._providers.values():
            await provider.open()

    async def aclose(self) -> None:
        for provider in self._providers.values():
            await provider.aclose()
