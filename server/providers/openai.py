"""A Provider for OpenAI-compatible chat completions.

OpenAI itself, vLLM, the llama.cpp server, Ollama's /v1 and the LiteLLM proxy
all speak this API; Azure OpenAI speaks it too and reuses the parsing here.

HTTP outcomes become the domain errors of `aiproc.server.core.errors`:

    2xx with choices[0].message.content   Completion
    2xx withheld by the content filter    InvalidRequest
    429, or 503 with a retry hint          RateLimited(retry_after)
    408, 5xx, network errors               TransientError
    read/write/pool timeout, deadline      ProviderTimeout
    401, 403                               AuthenticationFailed
    other 4xx                              InvalidRequest
    anything unparsable                    BadResponse
"""

from __future__ import annotations

import re
from typing import Any

import httpx

from aiproc.server.core.errors import BadResponse, InvalidRequest
from aiproc.server.core.models import TokenUsage
from aiproc.server.providers._http_errors import (
    Redactor,
    error_message,
    limit_reset_seconds,
    retry_after_seconds,
    seconds,
    token_count,
)
from aiproc.server.providers._http_provider import HttpProvider, answer_object
from aiproc.server.providers.base import Completion, CompletionRequest

# OpenAI's reset durations: "1s", "6m0s", "20ms", "1h2m3.5s"; Azure sends plain seconds.
_RESET_DURATION = re.compile(
    r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?!s))?"
    r"(?:(?P<s>\d+(?:\.\d+)?)s)?(?:(?P<ms>\d+(?:\.\d+)?)ms)?$"
)
_RESET_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


class OpenAIProvider(HttpProvider):
    """One OpenAI-compatible endpoint, called through an HTTP client it shares but does not own."""

    kind = "openai"

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str | None,
        model: str,
        context_window: int,
        http_client: httpx.AsyncClient,
        request_timeout: float | None = None,
    ) -> None:
        """`request_timeout` caps each call's own timeout, in seconds; None means no cap."""
        headers = {"Accept": "application/json"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        super().__init__(
            name, base_url, model, context_window, http_client, request_timeout, api_key, headers
        )

    async def _complete(self, request: CompletionRequest) -> Completion:
        """POSTs one chat completion; raises a ProviderError subclass on any failure."""
        model = request.model or self._model
        payload = {
            "model": model,
            "messages": chat_messages(request),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        body = await self._post(f"{self._base_url}/chat/completions", payload, request.timeout)
        return parse_chat_completion(
            body, provider=self._name, default_model=model, redactor=self._redactor
        )

    async def check_health(self, timeout: float) -> None:  # noqa: ASYNC109
        """GETs the model list, which costs nothing; raises a ProviderError subclass if it fails."""
        await self._get_json(f"{self._base_url}/models", timeout)

    def _retry_after(self, headers: httpx.Headers, *, now: float) -> float | None:
        return openai_retry_after(headers, now=now)


def chat_messages(request: CompletionRequest) -> list[dict[str, str]]:
    """The request's messages in the chat completions shape."""
    return [{"role": m.role, "content": m.content} for m in request.messages]


def openai_retry_after(headers: httpx.Headers, *, now: float) -> float | None:
    """Seconds to wait: retry-after-ms, Retry-After, then x-ratelimit-reset-requests/-tokens."""
    standard = retry_after_seconds(headers, now=now)
    if standard is not None:
        return standard
    return limit_reset_seconds(
        headers,
        reset="x-ratelimit-reset-{}",
        remaining="x-ratelimit-remaining-{}",
        kinds=("requests", "tokens"),
        parse=_reset_duration,
    )


def parse_chat_completion(
    body: bytes, *, provider: str, default_model: str, redactor: Redactor
) -> Completion:
    """The Completion in a chat completions answer; raises BadResponse when it holds none."""
    data = answer_object(body, provider=provider)
    choices = data.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    if not isinstance(choice, dict):
        detail = redactor.excerpt(error_message(body)) if "error" in data else ""
        raise BadResponse(
            f"{provider}: the answer has no choices" + (f": {detail}" if detail else ""),
            provider=provider,
        )
    message: Any = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    finish_reason = choice.get("finish_reason")
    finish_reason = finish_reason if isinstance(finish_reason, str) else ""
    # An empty answer marked as success would be the reference's fake success.
    if not isinstance(content, str) or not content.strip():
        if finish_reason == "content_filter":
            # The same prompt is filtered again: retrying cannot help.
            raise InvalidRequest(
                f"{provider}: the answer was withheld by the content filter", provider=provider
            )
        raise BadResponse(
            f"{provider}: the answer has no content"
            f" (finish_reason={redactor.label(finish_reason) or '?'})",
            provider=provider,
        )
    usage = data.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    model = data.get("model")
    return Completion(
        content=content,
        model=model if isinstance(model, str) and model else default_model,
        usage=TokenUsage(
            token_count(usage.get("prompt_tokens")), token_count(usage.get("completion_tokens"))
        ),
        finish_reason=finish_reason,
    )


def _reset_duration(value: str) -> float | None:
    if (plain := seconds(value)) is not None:
        return plain
    match = _RESET_DURATION.match(value)
    if match is None or not value:
        return None
    return sum(
        float(amount) * _RESET_UNITS[unit] for unit, amount in match.groupdict().items() if amount
    )
