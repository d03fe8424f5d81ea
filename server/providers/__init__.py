"""LLM providers: the Provider protocol, its implementations, the prompt and the registry."""

from aiproc.server.providers.base import ChatMessage, Completion, CompletionRequest, Provider
from aiproc.server.providers.http import create_http_client
from aiproc.server.providers.offline import OFFLINE_MODEL, OfflineProvider
from aiproc.server.providers.openai import OpenAIProvider
from aiproc.server.providers.prompt import (
    DEFAULT_SYSTEM_PROMPT,
    build_messages,
    context_window_for,
    estimate_tokens,
)
from aiproc.server.providers.registry import ProviderSet, build_providers

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "OFFLINE_MODEL",
    "ChatMessage",
    "Completion",
    "CompletionRequest",
    "OfflineProvider",
    "OpenAIProvider",
    "Provider",
    "ProviderSet",
    "build_messages",
    "build_providers",
    "context_window_for",
    "create_http_client",
    "estimate_tokens",
]
