"""Builds the configured providers, in priority order, around one shared HTTP client."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TypedDict

import httpx

from aiproc.server.config import (
    DEFAULT_BASE_URLS,
    PROVIDER_KINDS,
    ConfigError,
    ProcessorConfig,
    ProviderConfig,
)
from aiproc.server.providers.anthropic import DEFAULT_API_VERSION as ANTHROPIC_API_VERSION
from aiproc.server.providers.anthropic import AnthropicProvider
from aiproc.server.providers.azure_openai import DEFAULT_API_VERSION as AZURE_API_VERSION
from aiproc.server.providers.azure_openai import AzureOpenAIProvider
from aiproc.server.providers.base import Provider
from aiproc.server.providers.gemini import GeminiProvider
from aiproc.server.providers.http import create_http_client
from aiproc.server.providers.offline import OFFLINE_CONTEXT_WINDOW, OfflineProvider
from aiproc.server.providers.ollama import DEFAULT_CONTEXT_WINDOW as OLLAMA_CONTEXT_WINDOW
from aiproc.server.providers.ollama import OllamaProvider
from aiproc.server.providers.openai import OpenAIProvider
from aiproc.server.providers.prompt import context_window_for

logger = logging.getLogger(__name__)

_OFFLINE_FALLBACK = ProviderConfig(name="offline", kind="offline")
# These vendors refuse every call without a key; openai-compatible servers and
# Ollama often run without one.
_KEY_REQUIRED = frozenset({"anthropic", "azure_openai", "gemini"})


class ProviderSet:
    """The enabled providers, most preferred first, and the HTTP client they share."""

    def __init__(
        self,
        entries: Sequence[tuple[Provider, ProviderConfig]],
        *,
        owned_client: httpx.AsyncClient | None = None,
    ) -> None:
        """`owned_client`, when given, is closed by `aclose`."""
        self._providers = tuple(provider for provider, _ in entries)
        self._configs = {provider.name: config for provider, config in entries}
        self._client = owned_client

    @property
    def providers(self) -> tuple[Provider, ...]:
        return self._providers

    def config(self, name: str) -> ProviderConfig:
        """The configuration of the provider called `name` (priority, weight, limits)."""
        return self._configs[name]

    def __iter__(self) -> Iterator[Provider]:
        return iter(self._providers)

    def __len__(self) -> int:
        return len(self._providers)

    async def aclose(self) -> None:
        """Closes every provider, then the HTTP client if this set made it."""
        for provider in self._providers:
            await provider.aclose()
        if self._client is not None:
            await self._client.aclose()

    def __repr__(self) -> str:
        names = ", ".join(provider.name for provider in self._providers)
        return f"<ProviderSet [{names}]>"


def build_providers(
    configs: Sequence[ProviderConfig],
    processor: ProcessorConfig,
    *,
    env: Mapping[str, str],
    http_client: httpx.AsyncClient | None = None,
) -> ProviderSet:
    """The enabled providers of `configs`, lower `priority` first and ties in config order.

    API keys are read from `env`, from the variable each `api_key_env` names;
    anthropic, azure_openai and gemini must name one. A missing base_url is
    the vendor's public address. Without any enabled provider the set holds
    one OfflineProvider. An `http_client` passed in stays the caller's to
    close; otherwise one is made, sized to `processor.max_concurrent_requests`,
    and the set closes it.
    """
    enabled = sorted(
        ((index, config) for index, config in enumerate(configs) if config.enabled),
        key=lambda item: item[1].priority,
    )
    if not enabled:
        logger.warning(
            "no provider configured: using the offline provider, "
            "which does not call any language model"
        )
        return ProviderSet([(OfflineProvider(), _OFFLINE_FALLBACK)])

    # Everything that can fail is checked before a client is made.
    for index, config in enabled:
        if config.kind not in PROVIDER_KINDS:
            raise ConfigError(f"providers[{index}].kind", f"unknown kind {config.kind!r}")
        if config.kind in _KEY_REQUIRED and not config.api_key_env:
            raise ConfigError(f"providers[{index}].api_key_env", f"required for kind {config.kind}")
    keys = {
        index: _api_key(index, config, env) for index, config in enabled if config.kind != "offline"
    }
    # The aiohttp session behind a new client opens on first use, so a set of
    # offline providers costs nothing for having one.
    owned = None
    if http_client is None:
        owned = http_client = create_http_client(max_connections=processor.max_concurrent_requests)
    entries = [
        (_build(config, keys.get(index), processor, http_client), config)
        for index, config in enabled
    ]
    return ProviderSet(entries, owned_client=owned)


class _Shared(TypedDict):
    """The constructor arguments every HTTP provider takes alike."""

    name: str
    base_url: str
    model: str
    http_client: httpx.AsyncClient
    request_timeout: float | None


def _build(
    config: ProviderConfig,
    key: str | None,
    processor: ProcessorConfig,
    http_client: httpx.AsyncClient,
) -> Provider:
    """The provider `config` describes; `key` is from its api_key_env, None without one."""
    if config.kind == "offline":
        return OfflineProvider(
            config.name, context_window=config.context_window or OFFLINE_CONTEXT_WINDOW
        )
    model = config.model or processor.llm_model
    shared = _Shared(
        name=config.name,
        base_url=config.base_url or DEFAULT_BASE_URLS.get(config.kind, ""),
        model=model,
        http_client=http_client,
        request_timeout=config.request_timeout or None,
    )
    if config.kind == "ollama":
        window = config.context_window or OLLAMA_CONTEXT_WINDOW
        return OllamaProvider(**shared, context_window=window, api_key=key)
    window = config.context_window or context_window_for(model)
    if config.kind == "openai":
        return OpenAIProvider(**shared, context_window=window, api_key=key)
    # The kinds left need a key, which the checks before building made sure of.
    assert key is not None
    if config.kind == "anthropic":
        version = config.api_version or ANTHROPIC_API_VERSION
        return AnthropicProvider(**shared, context_window=window, api_key=key, api_version=version)
    if config.kind == "azure_openai":
        return AzureOpenAIProvider(
            **shared,
            context_window=window,
            api_key=key,
            deployment=config.deployment or model,
            api_version=config.api_version or AZURE_API_VERSION,
        )
    return GeminiProvider(**shared, context_window=window, api_key=key)


def _api_key(index: int, config: ProviderConfig, env: Mapping[str, str]) -> str | None:
    """The key from the variable `config.api_key_env` names; None when it names none."""
    if not config.api_key_env:
        return None
    key = env.get(config.api_key_env, "")
    if not key:
        raise ConfigError(
            f"providers[{index}].api_key_env",
            f"environment variable {config.api_key_env} is not set",
        )
    return key
