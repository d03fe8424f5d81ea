"""A Provider for Anthropic's Messages API (POST /v1/messages).

The system prompt goes in the top-level `system` field, the rest in
`messages`; the answer is the text of its `content` blocks. HTTP outcomes
become domain errors as `_http_errors` describes; Anthropic's own signals:

    429 with retry-after, or the anthropic-ratelimit-*-reset times   RateLimited(retry_after)
    529 overloaded_error, 500                                        TransientError
    400, 404, 413 request_too_large                                  InvalidRequest
    2xx with stop_reason refusal and no text                         InvalidRequest
    2xx with no text block                                           BadResponse
"""

from __future__ import annotations

import datetime
from typing import Any

import httpx

from aiproc.server.core.errors import BadResponse, InvalidRequest
from aiproc.server.core.models import TokenUsage
from aiproc.server.providers._http_errors import (
    error_message,
    limit_reset_seconds,
    retry_after_seconds,
    token_count,
)
from aiproc.server.providers._http_provider import HttpProvider, answer_object
from aiproc.server.providers.base import Completion, CompletionRequest

DEFAULT_API_VERSION = "2023-06-01"
# The Messages API rejects a temperature above 1.0, which the config allows for others.
_MAX_TEMPERATURE = 1.0
_LIMITS = ("requests", "tokens", "input-tokens", "output-tokens")


class AnthropicProvider(HttpProvider):
    """One Anthropic API key and model, called through an HTTP client it shares but does not own."""

    kind = "anthropic"

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str,
        model: str,
        context_window: int,
        http_client: httpx.AsyncClient,
        api_version: str = DEFAULT_API_VERSION,
        request_timeout: float | None = None,
    ) -> None:
        """`request_timeout` caps each call's own timeout, in seconds; None means no cap."""
        headers = {
            "x-api-key": api_key,
            "anthropic-version": api_version or DEFAULT_API_VERSION,
            "content-type": "application/json",
            "accept": "application/json",
        }
        super().__init__(
            name, base_url, model, context_window, http_client, request_timeout, api_key, headers
        )

    async def _complete(self, request: CompletionRequest) -> Completion:
        """POSTs one message; raises a ProviderError subclass on any failure."""
        model = request.model or self._model
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        payload: dict[str, Any] = {
            "model": model,
            "max_tokens": request.max_tokens,
            "messages": [
                {"role": m.role, "content": m.content}
                for m in request.messages
                if m.role != "system"
            ],
            "temperature": min(request.temperature, _MAX_TEMPERATURE),
        }
        if system:
            payload["system"] = system
        body = await self._post(f"{self._base_url}/v1/messages", payload, request.timeout)
        return self._completion(body, model)

    async def check_health(self, timeout: float) -> None:  # noqa: ASYNC109
        """GETs the model list, which costs nothing; raises a ProviderError subclass if it fails."""
        await self._get_json(f"{self._base_url}/v1/models", timeout)

    def _retry_after(self, headers: httpx.Headers, *, now: float) -> float | None:
        return anthropic_retry_after(headers, now=now)

    def _completion(self, body: bytes, model: str) -> Completion:
        data = answer_object(body, provider=self._name)
        blocks = data.get("content")
        stop_reason = data.get("stop_reason")
        stop_reason = stop_reason if isinstance(stop_reason, str) else ""
        # Thinking and tool_use blocks are not the answer; only text blocks are.
        texts = [
            block["text"]
            for block in (blocks if isinstance(blocks, list) else [])
            if isinstance(block, dict)
            and block.get("type") == "text"
            and isinstance(block.get("text"), str)
        ]
        content = "".join(texts)
        if not content.strip():
            if stop_reason == "refusal":
                # The model declines this prompt; asking again gets the same answer.
                raise InvalidRequest(f"{self._name}: the model refused", provider=self._name)
            detail = self._redactor.excerpt(error_message(body)) if "error" in data else ""
            raise BadResponse(
                f"{self._name}: the answer has no text"
                f" (stop_reason={self._redactor.label(stop_reason) or '?'})"
                + (f": {detail}" if detail else ""),
                provider=self._name,
            )
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        answered_by = data.get("model")
        return Completion(
            content=content,
            model=answered_by if isinstance(answered_by, str) and answered_by else model,
            usage=TokenUsage(
                token_count(usage.get("input_tokens")), token_count(usage.get("output_tokens"))
            ),
            finish_reason=stop_reason,
        )


def anthropic_retry_after(headers: httpx.Headers, *, now: float) -> float | None:
    """Seconds to wait: retry-after, else the reset time of the exhausted anthropic-ratelimit-*."""
    standard = retry_after_seconds(headers, now=now)
    if standard is not None:
        return standard
    return limit_reset_seconds(
        headers,
        reset="anthropic-ratelimit-{}-reset",
        remaining="anthropic-ratelimit-{}-remaining",
        kinds=_LIMITS,
        parse=lambda value: _until(value, now),
    )


def _until(timestamp: str, now: float) -> float | None:
    """Seconds from `now` until an RFC 3339 time, 0 when it has passed, None when unreadable."""
    try:
        when = datetime.datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(when.timestamp() - now, 0.0)
