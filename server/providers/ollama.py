"""A Provider for Ollama's native chat API (POST /api/chat, not streamed).

Ollama needs no key; a Bearer header is sent only when one is configured,
for a proxy in front of it. Each request sets `num_ctx` to the provider's
context window: without it Ollama uses its own small default and silently
drops the start of a longer prompt, system prompt included. HTTP outcomes
become domain errors as `_http_errors` describes; Ollama's errors are
`{"error": "..."}`, e.g. 404 "model 'x' not found" (InvalidRequest).
"""

from __future__ import annotations

from typing import Any

import httpx

from aiproc.server.core.errors import BadResponse, InvalidRequest
from aiproc.server.core.models import TokenUsage
from aiproc.server.providers._http_errors import error_message, token_count
from aiproc.server.providers._http_provider import HttpProvider, answer_object
from aiproc.server.providers.base import Completion, CompletionRequest

DEFAULT_CONTEXT_WINDOW = 8192
"""The window used when the config gives none: Ollama's is what its host's memory holds, not
what the model could take, and 8K fits a small GPU."""


class OllamaProvider(HttpProvider):
    """One Ollama server and model, called through an HTTP client it shares but does not own."""

    kind = "ollama"

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        model: str,
        context_window: int,
        http_client: httpx.AsyncClient,
        api_key: str | None = None,
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
        """POSTs one chat turn; raises a ProviderError subclass on any failure."""
        model = request.model or self._model
        payload: dict[str, Any] = {
            "model": model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "stream": False,
            "options": {
                "num_predict": request.max_tokens,
                "temperature": request.temperature,
                "num_ctx": self._context_window,
            },
        }
        body = await self._post(f"{self._base_url}/api/chat", payload, request.timeout)
        return self._completion(body, model)

    async def check_health(self, timeout: float) -> None:  # noqa: ASYNC109
        """GETs the local models and checks the model is among them; else raises a ProviderError."""
        data = await self._get_json(f"{self._base_url}/api/tags", timeout)
        models = data.get("models")
        if not isinstance(models, list):
            raise BadResponse(f"{self._name}: the model list has no models", provider=self._name)
        names = {
            _tagged(entry.get(key))
            for entry in models
            if isinstance(entry, dict)
            for key in ("name", "model")
            if isinstance(entry.get(key), str)
        }
        # Every completion would fail with 404 until someone runs `ollama pull`.
        if _tagged(self._model) not in names:
            raise InvalidRequest(
                f"{self._name}: model {self._model!r} is not pulled on this Ollama server",
                provider=self._name,
            )

    def _completion(self, body: bytes, model: str) -> Completion:
        data = answer_object(body, provider=self._name)
        message = data.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        done_reason = data.get("done_reason")
        done_reason = done_reason if isinstance(done_reason, str) else ""
        if not isinstance(content, str) or not content.strip():
            detail = self._redactor.excerpt(error_message(body)) if "error" in data else ""
            raise BadResponse(
                f"{self._name}: the answer has no content"
                f" (done_reason={self._redactor.label(done_reason) or '?'})"
                + (f": {detail}" if detail else ""),
                provider=self._name,
            )
        answered_by = data.get("model")
        return Completion(
            content=content,
            model=answered_by if isinstance(answered_by, str) and answered_by else model,
            usage=TokenUsage(
                token_count(data.get("prompt_eval_count")), token_count(data.get("eval_count"))
            ),
            finish_reason=done_reason,
        )


def _tagged(name: object) -> str:
    """A model name with its tag: Ollama reads "llama3.1" as "llama3.1:latest"."""
    text = str(name)
    return text if ":" in text.rsplit("/", 1)[-1] else f"{text}:latest"
