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
# Keys are a few hundred bytes; a path to a large file (or /dev/zero) is a mistake.
_MAX_KEY_FILE_BYTES = 16 * 1024


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

    API keys are read from `env`, from the variable each `api_key_env` names, or
    from the file `api_key_file` names; anthropic, azure_openai and gemini need
    one. A missing base_url is the vendor's public address. Without any enabled
    provider the set holds one OfflineProvider. An `http_client` passed in stays the caller's to
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
        if config.kind in _KEY_REQUIRED and not (config.api_key_env or config.api_key_file):
            raise ConfigError(
                f"providers[{index}].api_key_env",
                f"required for kind {config.kind} (or api_key_file)",
            )
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
    """The key from `config.api_key_env`'s variable or `config.api_key_file`; None without one.

    Every error names the field and never shows the key, or any part of it.
    """
    if config.api_key_file:
        field, source = f"providers[{index}].api_key_file", config.api_key_file
        key = _read_key_file(field, source)
    elif config.api_key_env:
        field, source = f"providers[{index}].api_key_env", config.api_key_env
        key = env.get(source, "")
        if not key:
            raise ConfigError(field, f"environment variable {source} is not set")
    else:
        return None
    # It goes into an HTTP header: anything else would fail every call, with an error from
    # the HTTP library that quotes the header, key and all.
    if not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
        raise ConfigError(
            field, f"the key in {source} holds spaces, control or non-ASCII characters"
        )
    return key


def _read_key_file(field: str, path: str) -> str:
    try:
        with open(path, "rb") as file:
            data = file.read(_MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(field, f"cannot read {path}: {reason}") from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise ConfigError(field, f"{path} is over {_MAX_KEY_FILE_BYTES} bytes: not a key file")
    try:
        # Not the decoder's own message: it quotes the bad byte, a piece of the key.
        key = data.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError:
        raise ConfigError(field, f"{path} is not UTF-8 text") from None
    if not key:
        raise ConfigError(field, f"{path} is empty")
    return key
