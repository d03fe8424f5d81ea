"""A Provider for the Gemini API's generateContent (Google AI, generativelanguage.googleapis.com).

The key travels in the `x-goog-api-key` header, never in the URL, so it
cannot land in access logs. System messages become `systemInstruction`, the
others `contents` (the assistant's role is "model"). HTTP outcomes become
domain errors as `_http_errors` describes; Gemini's own signals:

    429 RESOURCE_EXHAUSTED, wait in error.details RetryInfo.retryDelay   RateLimited(retry_after)
    400 INVALID_ARGUMENT with reason API_KEY_INVALID                     AuthenticationFailed
    2xx with promptFeedback.blockReason, or no candidates                InvalidRequest
    2xx whose candidate stopped for SAFETY, RECITATION, … with no text   InvalidRequest
    2xx with a candidate but no text otherwise                           BadResponse
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import httpx

from aiproc.server.core.errors import (
    AuthenticationFailed,
    BadResponse,
    InvalidRequest,
    ProviderError,
)
from aiproc.server.core.models import TokenUsage
from aiproc.server.providers._exchange import Reply
from aiproc.server.providers._http_errors import (
    error_for_status,
    error_message,
    json_object,
    retry_after_seconds,
    seconds,
    token_count,
)
from aiproc.server.providers._http_provider import HttpProvider, answer_object
from aiproc.server.providers.base import Completion, CompletionRequest

# Finish reasons that mean Google withheld the text; the same prompt is withheld again.
_BLOCKED = frozenset(
    {"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY", "LANGUAGE"}
)
_ROLES = {"user": "user", "assistant": "model"}


class GeminiProvider(HttpProvider):
    """One Gemini API key and model, called through an HTTP client it shares but does not own."""

    kind = "gemini"

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str,
        model: str,
        context_window: int,
        http_client: httpx.AsyncClient,
        request_timeout: float | None = None,
    ) -> None:
        """`base_url` includes the API version (…/v1beta); `request_timeout` caps each call."""
        headers = {"x-goog-api-key": api_key, "Accept": "application/json"}
        super().__init__(
            name, base_url, model, context_window, http_client, request_timeout, api_key, headers
        )

    async def _complete(self, request: CompletionRequest) -> Completion:
        """POSTs one generateContent; raises a ProviderError subclass on any failure."""
        model = (request.model or self._model).removeprefix("models/")
        system = "\n\n".join(m.content for m in request.messages if m.role == "system")
        payload: dict[str, Any] = {
            "contents": [
                {"role": _ROLES.get(m.role, "user"), "parts": [{"text": m.content}]}
                for m in request.messages
                if m.role != "system"
            ],
            "generationConfig": {
                "maxOutputTokens": request.max_tokens,
                "temperature": request.temperature,
            },
        }
        if system:
            payload["systemInstruction"] = {"parts": [{"text": system}]}
        url = f"{self._base_url}/models/{quote(model, safe='')}:generateContent"
        body = await self._post(url, payload, request.timeout)
        return self._completion(body, model)

    async def check_health(self, timeout: float) -> None:  # noqa: ASYNC109
        """GETs the model list, which costs nothing; raises a ProviderError subclass if it fails."""
        await self._get_json(f"{self._base_url}/models", timeout)

    def _error(self, reply: Reply) -> ProviderError:
        detail = self._redactor.excerpt(error_message(reply.body))
        details = _error_details(reply.body)
        # Gemini answers a wrong key with 400, not 401.
        if any(d.get("reason") == "API_KEY_INVALID" for d in details):
            return AuthenticationFailed(
                f"{self._name}: HTTP {reply.status}: {detail}", provider=self._name
            )
        retry_after = retry_after_seconds(reply.headers, now=time.time())
        if retry_after is None:
            retry_after = next(
                (
                    wait
                    for d in details
                    if str(d.get("@type", "")).endswith("google.rpc.RetryInfo")
                    and (wait := _duration(d.get("retryDelay"))) is not None
                ),
                None,
            )
        return error_for_status(reply.status, detail, provider=self._name, retry_after=retry_after)

    def _completion(self, body: bytes, model: str) -> Completion:
        data = answer_object(body, provider=self._name)
        feedback = data.get("promptFeedback")
        block = feedback.get("blockReason") if isinstance(feedback, dict) else None
        if block:
            raise InvalidRequest(
                f"{self._name}: the prompt was blocked ({self._redactor.label(block) or '?'})",
                provider=self._name,
            )
        candidates = data.get("candidates")
        candidate = candidates[0] if isinstance(candidates, list) and candidates else None
        if not isinstance(candidate, dict):
            raise InvalidRequest(f"{self._name}: the answer has no candidates", provider=self._name)
        finish_reason = candidate.get("finishReason")
        finish_reason = finish_reason if isinstance(finish_reason, str) else ""
        content = candidate.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        # Thought summaries are the model's notes, not its answer.
        text = "".join(
            part["text"]
            for part in (parts if isinstance(parts, list) else [])
            if isinstance(part, dict)
            and isinstance(part.get("text"), str)
            and not part.get("thought")
        )
        if not text.strip():
            error = InvalidRequest if finish_reason in _BLOCKED else BadResponse
            raise error(
                f"{self._name}: the answer has no text"
                f" (finishReason={self._redactor.label(finish_reason) or '?'})",
                provider=self._name,
            )
        usage = data.get("usageMetadata")
        usage = usage if isinstance(usage, dict) else {}
        version = data.get("modelVersion")
        return Completion(
            content=text,
            model=version if isinstance(version, str) and version else model,
            # Thinking tokens are billed as output, so they count as completion tokens.
            usage=TokenUsage(
                token_count(usage.get("promptTokenCount")),
                token_count(usage.get("candidatesTokenCount"))
                + token_count(usage.get("thoughtsTokenCount")),
            ),
            finish_reason=finish_reason,
        )


def _error_details(body: bytes) -> list[dict[str, Any]]:
    """The google.rpc detail objects of an error body (ErrorInfo, RetryInfo, …)."""
    data = json_object(body)
    error = data.get("error") if data is not None else None
    details = error.get("details") if isinstance(error, dict) else None
    return [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []


def _duration(value: object) -> float | None:
    """Seconds in a protobuf Duration's JSON form, e.g. "38s" or "45.837906927s"."""
    if not isinstance(value, str) or not value.endswith("s"):
        return None
    return seconds(value[:-1])
