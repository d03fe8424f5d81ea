"""The fake provider's Gemini dialect: generateContent and the model list, under /v1beta.

    POST /v1beta/models/{model}:generateContent
    GET  /v1beta/models

It checks what the Gemini API checks: an API key, in the `x-goog-api-key`
header or the `key` query parameter as Google accepts both (none: 403
PERMISSION_DENIED; a wrong one: 400 INVALID_ARGUMENT with reason
API_KEY_INVALID); a model it serves (404 NOT_FOUND otherwise); and a body
with non-empty `contents` of "user"/"model" parts, no unknown fields, and a
generationConfig within range. The key is "aiproc-fake-gemini-key" unless one
is given. Errors are {"error": {"code", "message", "status", "details"?}}.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aiproc.server.fakes.dialect import (
    FakeError,
    FakeRequest,
    FakeResponse,
    FakeUsage,
    Route,
    RouteKind,
)
from aiproc.server.providers.prompt import estimate_tokens

__all__ = ["FAKE_API_KEY", "FAKE_MODEL", "GeminiDialect", "retry_info"]

FAKE_API_KEY = "aiproc-fake-gemini-key"
FAKE_MODEL = "gemini-fake-flash"
_BAD_KEY = "API key not valid. Please pass a valid API key."
_STATUS_NAMES = {
    400: "INVALID_ARGUMENT",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
    504: "DEADLINE_EXCEEDED",
}
# Fields of GenerateContentRequest; Google's JSON parser also takes the proto names.
_REQUEST_FIELDS = {
    "contents",
    "systemInstruction",
    "system_instruction",
    "generationConfig",
    "generation_config",
    "safetySettings",
    "safety_settings",
    "tools",
    "toolConfig",
    "tool_config",
    "cachedContent",
    "cached_content",
}


def retry_info(seconds: float) -> dict[str, Any]:
    """The google.rpc.RetryInfo detail a 429 carries, asking the client to wait `seconds`."""
    return {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{seconds:g}s"}


class GeminiDialect:
    """The Gemini API serving some models, accepting one API key."""

    name = "gemini"
    title = "Gemini API"

    def __init__(self, api_key: str = FAKE_API_KEY, models: Sequence[str] = (FAKE_MODEL,)) -> None:
        self._api_key = api_key
        self._models = tuple(models)

    def routes(self) -> Sequence[Route]:
        return (
            Route("POST", "/v1beta/models/{model}:generateContent", "completion"),
            Route("GET", "/v1beta/models", "models"),
        )

    def base_url(self, host: str, port: int) -> str:
        return f"http://{host}:{port}/v1beta"

    def check_request(self, kind: RouteKind, request: FakeRequest) -> FakeError | None:
        key = request.headers.get("x-goog-api-key") or request.query.get("key")
        if not key:
            return FakeError(
                403,
                "Method doesn't allow unregistered callers (callers without established "
                "identity). Please use API Key or other form of API consumer identity to call "
                "this API.",
            )
        if key != self._api_key:
            return FakeError(400, _BAD_KEY)
        if kind == "models":
            return None
        model = request.match_info.get("model", "")
        if model not in self._models:
            return FakeError(
                404,
                f"models/{model} is not found for API version v1beta, or is not supported "
                "for generateContent.",
            )
        if problem := _invalid_request(request.body):
            return FakeError(400, problem)
        return None

    def success(
        self, kind: RouteKind, request: FakeRequest, content: str, usage: FakeUsage
    ) -> FakeResponse:
        if kind == "models":
            models = [
                {
                    "name": f"models/{model}",
                    "version": "001",
                    "displayName": model,
                    "inputTokenLimit": 1_048_576,
                    "outputTokenLimit": 8192,
                    "supportedGenerationMethods": ["generateContent", "countTokens"],
                }
                for model in self._models
            ]
            return FakeResponse(200, {"models": models})
        body = request.body
        system = body.get("systemInstruction", body.get("system_instruction", {}))
        prompt_tokens = sum(estimate_tokens(_text(entry)) for entry in [system, *body["contents"]])
        answer = {
            "candidates": [
                {
                    "content": {"parts": [{"text": content}], "role": "model"},
                    "finishReason": "STOP",
                    "index": 0,
                }
            ],
            "usageMetadata": {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": usage.completion_tokens,
                "totalTokenCount": prompt_tokens + usage.completion_tokens,
            },
            "modelVersion": request.match_info["model"],
            "responseId": "fake-response",
        }
        return FakeResponse(200, answer)

    def error(self, status: int, message: str) -> FakeResponse:
        error: dict[str, Any] = {
            "code": status,
            "message": message,
            "status": _STATUS_NAMES.get(status, "UNKNOWN"),
        }
        # The dialect's only word on why is the message: a wrong key is this one.
        if message == _BAD_KEY:
            error["details"] = [
                {
                    "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID",
                    "domain": "googleapis.com",
                    "metadata": {"service": "generativelanguage.googleapis.com"},
                }
            ]
        return FakeResponse(status, {"error": error})

    def prompt_text(self, request: FakeRequest) -> str:
        contents = request.body["contents"]
        return next((_text(c) for c in reversed(contents) if c.get("role", "user") == "user"), "")


def _text(content: Any) -> str:
    """The text of a Content's parts."""
    parts = content.get("parts", []) if isinstance(content, dict) else []
    return "".join(part.get("text", "") for part in parts if isinstance(part, dict))


def _invalid_request(body: Any) -> str:
    """Why the Gemini API would refuse `body` as a GenerateContentRequest, or ""."""
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object."
    for name in body:
        if name not in _REQUEST_FIELDS:
            return f'Invalid JSON payload received. Unknown name "{name}": Cannot find field.'
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for index, content in enumerate(contents):
        if not isinstance(content, dict) or content.get("role", "user") not in ("user", "model"):
            return f"* GenerateContentRequest.contents[{index}].role: must be 'user' or 'model'"
        parts = content.get("parts")
        if not isinstance(parts, list) or not parts:
            return f"* GenerateContentRequest.contents[{index}].parts: must not be empty"
    config = body.get("generationConfig", body.get("generation_config", {}))
    if not isinstance(config, dict):
        return "generationConfig must be an object"
    max_tokens = config.get("maxOutputTokens", config.get("max_output_tokens", 1))
    if not isinstance(max_tokens, int) or max_tokens < 1:
        return "* GenerateContentRequest.generation_config.max_output_tokens: must be positive"
    temperature = config.get("temperature", 1.0)
    if not isinstance(temperature, int | float) or not 0.0 <= temperature <= 2.0:
        return "* GenerateContentRequest.generation_config.temperature: must be within [0, 2]"
    return ""
