"""The vendor fakes refuse what the real APIs refuse, in each vendor's own error shape."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from aiproc.server.fakes import anthropic_dialect, azure_dialect, gemini_dialect, ollama_dialect
from aiproc.server.fakes.dialect import Dialect
from aiproc.server.fakes.engine import FakeProviderServer
from aiproc.server.fakes.registry import create_dialect

ANTHROPIC_HEADERS = {"x-api-key": anthropic_dialect.FAKE_API_KEY, "anthropic-version": "2023-06-01"}
ANTHROPIC_BODY = {
    "model": anthropic_dialect.FAKE_MODEL,
    "max_tokens": 16,
    "messages": [{"role": "user", "content": "hi"}],
}
AZURE_CHAT = f"/openai/deployments/{azure_dialect.FAKE_DEPLOYMENT}/chat/completions"
AZURE_VERSION = "?api-version=2024-10-21"
AZURE_HEADERS = {"api-key": azure_dialect.FAKE_API_KEY}
AZURE_BODY = {"messages": [{"role": "user", "content": "hi"}]}
OLLAMA_BODY = {
    "model": ollama_dialect.FAKE_MODEL,
    "messages": [{"role": "user", "content": "hi"}],
    "stream": False,
}
GEMINI_GENERATE = f"/models/{gemini_dialect.FAKE_MODEL}:generateContent"
GEMINI_HEADERS = {"x-goog-api-key": gemini_dialect.FAKE_API_KEY}
GEMINI_BODY = {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}


def without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if k != key}


def refusal(
    factory: Callable[[], Dialect],
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any,
    status: int,
    message: str,
) -> Any:
    """One request a real API refuses: how to send it, and the status and words it gets."""
    return pytest.param(factory, method, path, headers, body, status, message, id=message)


REFUSALS = [
    # Anthropic: {"type": "error", "error": {"type", "message"}}.
    refusal(
        anthropic_dialect.AnthropicDialect,
        "POST",
        "/v1/messages",
        without(ANTHROPIC_HEADERS, "x-api-key"),
        ANTHROPIC_BODY,
        401,
        "x-api-key header is required",
    ),
    refusal(
        anthropic_dialect.AnthropicDialect,
        "POST",
        "/v1/messages",
        {**ANTHROPIC_HEADERS, "x-api-key": "wrong"},
        ANTHROPIC_BODY,
        401,
        "invalid x-api-key",
    ),
    refusal(
        anthropic_dialect.AnthropicDialect,
        "GET",
        "/v1/models",
        without(ANTHROPIC_HEADERS, "anthropic-version"),
        None,
        400,
        "anthropic-version",
    ),
    refusal(
        anthropic_dialect.AnthropicDialect,
        "POST",
        "/v1/messages",
        ANTHROPIC_HEADERS,
        without(ANTHROPIC_BODY, "max_tokens"),
        400,
        "max_tokens",
    ),
    refusal(
        anthropic_dialect.AnthropicDialect,
        "POST",
        "/v1/messages",
        ANTHROPIC_HEADERS,
        {**ANTHROPIC_BODY, "messages": [{"role": "system", "content": "x"}]},
        400,
        "messages.0.role",
    ),
    refusal(
        anthropic_dialect.AnthropicDialect,
        "POST",
        "/v1/messages",
        ANTHROPIC_HEADERS,
        {**ANTHROPIC_BODY, "temperature": 1.5},
        400,
        "temperature",
    ),
    # Azure: the gateway's 401, and 404 without api-version or deployment.
    refusal(
        azure_dialect.AzureDialect,
        "POST",
        AZURE_CHAT,
        AZURE_HEADERS,
        AZURE_BODY,
        404,
        "Resource not found",
    ),
    refusal(
        azure_dialect.AzureDialect,
        "POST",
        AZURE_CHAT + AZURE_VERSION,
        {"api-key": "wrong"},
        AZURE_BODY,
        401,
        "Access denied",
    ),
    refusal(
        azure_dialect.AzureDialect,
        "POST",
        AZURE_CHAT + AZURE_VERSION,
        {"authorization": f"Bearer {azure_dialect.FAKE_API_KEY}"},
        AZURE_BODY,
        401,
        "Access denied",
    ),
    refusal(
        azure_dialect.AzureDialect,
        "POST",
        "/openai/deployments/other/chat/completions" + AZURE_VERSION,
        AZURE_HEADERS,
        AZURE_BODY,
        404,
        "deployment",
    ),
    refusal(
        azure_dialect.AzureDialect,
        "POST",
        AZURE_CHAT + AZURE_VERSION,
        AZURE_HEADERS,
        {"messages": []},
        400,
        "messages",
    ),
    # Ollama: {"error": "..."}.
    refusal(
        ollama_dialect.OllamaDialect,
        "POST",
        "/api/chat",
        {},
        without(OLLAMA_BODY, "model"),
        400,
        "model is required",
    ),
    refusal(
        ollama_dialect.OllamaDialect,
        "POST",
        "/api/chat",
        {},
        {**OLLAMA_BODY, "model": "absent"},
        404,
        "model 'absent' not found",
    ),
    refusal(
        ollama_dialect.OllamaDialect,
        "POST",
        "/api/chat",
        {},
        without(OLLAMA_BODY, "stream"),
        400,
        "stream: false",
    ),
    refusal(
        ollama_dialect.OllamaDialect,
        "POST",
        "/api/chat",
        {},
        {**OLLAMA_BODY, "messages": [{"role": "robot", "content": "x"}]},
        400,
        "invalid role",
    ),
    # Gemini: {"error": {"code", "message", "status"}}.
    refusal(
        gemini_dialect.GeminiDialect,
        "POST",
        GEMINI_GENERATE,
        {},
        GEMINI_BODY,
        403,
        "unregistered callers",
    ),
    refusal(
        gemini_dialect.GeminiDialect,
        "POST",
        GEMINI_GENERATE,
        {"x-goog-api-key": "wrong"},
        GEMINI_BODY,
        400,
        "API key not valid",
    ),
    refusal(
        gemini_dialect.GeminiDialect,
        "POST",
        "/models/absent:generateContent",
        GEMINI_HEADERS,
        GEMINI_BODY,
        404,
        "models/absent is not found",
    ),
    refusal(
        gemini_dialect.GeminiDialect,
        "POST",
        GEMINI_GENERATE,
        GEMINI_HEADERS,
        {**GEMINI_BODY, "max_tokens": 5},
        400,
        'Unknown name "max_tokens"',
    ),
    refusal(
        gemini_dialect.GeminiDialect,
        "POST",
        GEMINI_GENERATE,
        GEMINI_HEADERS,
        {"contents": []},
        400,
        "contents is not specified",
    ),
    refusal(
        gemini_dialect.GeminiDialect,
        "POST",
        GEMINI_GENERATE,
        GEMINI_HEADERS,
        {**GEMINI_BODY, "generationConfig": {"temperature": 3}},
        400,
        "temperature",
    ),
]


@pytest.mark.parametrize(
    ("factory", "method", "path", "headers", "body", "status", "message"), REFUSALS
)
async def test_the_fakes_refuse_what_the_real_apis_refuse(
    client: httpx.AsyncClient,
    factory: Callable[[], Dialect],
    method: str,
    path: str,
    headers: dict[str, str],
    body: Any,
    status: int,
    message: str,
) -> None:
    async with FakeProviderServer(factory()) as fake:
        response = await client.request(method, fake.base_url + path, headers=headers, json=body)

    assert response.status_code == status
    error = response.json()
    # Each vendor's error shape: a message where its clients look for one.
    assert message in str(error.get("error", error.get("message")))


async def test_the_gemini_fake_takes_the_key_as_a_query_parameter_too(
    client: httpx.AsyncClient,
) -> None:
    async with FakeProviderServer(gemini_dialect.GeminiDialect()) as fake:
        response = await client.get(f"{fake.base_url}/models?key={gemini_dialect.FAKE_API_KEY}")

    assert response.status_code == 200
    assert response.json()["models"][0]["name"] == f"models/{gemini_dialect.FAKE_MODEL}"


async def test_an_ollama_chat_without_messages_only_loads_the_model(
    client: httpx.AsyncClient,
) -> None:
    async with FakeProviderServer(ollama_dialect.OllamaDialect()) as fake:
        response = await client.post(
            f"{fake.base_url}/api/chat", json={**OLLAMA_BODY, "messages": []}
        )

    assert response.status_code == 200
    assert response.json()["message"]["content"] == ""
    assert response.json()["done_reason"] == "load"


@pytest.mark.parametrize(
    ("name", "title"),
    [
        ("anthropic", "Anthropic Messages API"),
        ("azure_openai", "Azure OpenAI"),
        ("ollama", "Ollama"),
        ("gemini", "Gemini API"),
    ],
)
def test_each_vendor_dialect_is_registered_for_the_fake_provider_command(
    name: str, title: str
) -> None:
    dialect = create_dialect(name)

    assert (dialect.name, dialect.title) == (name, title)
