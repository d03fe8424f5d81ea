"""Names and attributes of the OpenTelemetry GenAI semantic conventions that aiproc uses."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from types import MappingProxyType
from urllib.parse import urlsplit

OPERATION = "chat"

# gen_ai.provider.name well-known values; kinds without one keep their own name.
PROVIDER_NAMES = {
    "openai": "openai",
    "azure_openai": "azure.ai.openai",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "ollama": "ollama",
    "offline": "aiproc.offline",
}

OPERATION_NAME = "gen_ai.operation.name"
PROVIDER_NAME = "gen_ai.provider.name"
REQUEST_MODEL = "gen_ai.request.model"
REQUEST_MAX_TOKENS = "gen_ai.request.max_tokens"
REQUEST_TEMPERATURE = "gen_ai.request.temperature"
RESPONSE_MODEL = "gen_ai.response.model"
RESPONSE_FINISH_REASONS = "gen_ai.response.finish_reasons"
USAGE_INPUT_TOKENS = "gen_ai.usage.input_tokens"
USAGE_OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
SERVER_ADDRESS = "server.address"
SERVER_PORT = "server.port"
ERROR_TYPE = "error.type"


def provider_name(kind: str) -> str:
    return PROVIDER_NAMES.get(kind, kind)


def span_name(model: str) -> str:
    """`{gen_ai.operation.name} {gen_ai.request.model}`."""
    return f"{OPERATION} {model}" if model else OPERATION


@functools.lru_cache(maxsize=64)
def server_attributes(base_url: str) -> Mapping[str, str | int]:
    """server.address and server.port of an API root; userinfo never leaves the URL.

    Cached: every call to a provider asks again for the same few roots."""
    if not base_url:
        return MappingProxyType({})
    parts = urlsplit(base_url)
    attributes: dict[str, str | int] = {}
    if parts.hostname:
        attributes[SERVER_ADDRESS] = parts.hostname
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is not None:
        attributes[SERVER_PORT] = port
    return MappingProxyType(attributes)  # shared by every caller: read-only
