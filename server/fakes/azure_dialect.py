"""The fake provider's Azure OpenAI dialect: one deployment's chat completions and the model list.

    POST /openai/deployments/{deployment}/chat/completions?api-version=...
    GET  /openai/models?api-version=...

It checks what Azure checks: an `api-version` query parameter (without one
Azure answers 404 "Resource not found"), the `api-key` header (equal to the
dialect's key, "aiproc-fake-azure-key" unless one is given; a wrong one gets
the gateway's 401 {"statusCode": 401, "message": ...}), a deployment that
exists (404 otherwise) and an OpenAI chat body. The
deployment chooses the model, so a body without `model` is accepted and the
answer names the deployment's model. Errors are {"error": {"code", "message"}}.
"""

from __future__ import annotations

import itertools
import time
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

__all__ = ["FAKE_API_KEY", "FAKE_DEPLOYMENT", "FAKE_MODEL", "AzureDialect"]

FAKE_API_KEY = "aiproc-fake-azure-key"
FAKE_DEPLOYMENT = "fake-deployment"
FAKE_MODEL = "gpt-4o-2024-08-06"
"""What the fake deployment runs, as Azure names it in answers."""

# Azure's gateway answers a bad key in its own shape, not the API's.
_GATEWAY_401 = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to "
    "provide a valid key for an active subscription and use a correct regional API endpoint "
    "for your resource."
)
_NO_FILTERING = {
    category: {"filtered": False, "severity": "safe"}
    for category in ("hate", "self_harm", "sexual", "violence")
}


class AzureDialect:
    """An Azure OpenAI resource with one deployment, accepting one API key."""

    name = "azure_openai"
    title = "Azure OpenAI"

    def __init__(
        self,
        api_key: str = FAKE_API_KEY,
        deployment: str = FAKE_DEPLOYMENT,
        model: str = FAKE_MODEL,
    ) -> None:
        self._api_key = api_key
        self._deployment = deployment
        self._model = model
        self._ids = itertools.count(1)

    def routes(self) -> Sequence[Route]:
        return (
            Route("POST", "/openai/deployments/{deployment}/chat/completions", "completion"),
            Route("GET", "/openai/models", "models"),
        )

    def base_url(self, host: str, port: int) -> str:
        return f"http://{host}:{port}"

    def check_request(self, kind: RouteKind, request: FakeRequest) -> FakeError | None:
        if not request.query.get("api-version"):
            return FakeError(404, "Resource not found")
        if request.headers.get("api-key") != self._api_key:
            return FakeError(401, _GATEWAY_401)
        if kind == "models":
            return None
        if request.match_info.get("deployment") != self._deployment:
            return FakeError(
                404,
                "The API deployment for this resource does not exist. If you created the "
                "deployment within the last 5 minutes, please wait a moment and try again.",
            )
        if problem := _invalid_chat_request(request.body):
            return FakeError(400, problem)
        return None

    def success(
        self, kind: RouteKind, request: FakeRequest, content: str, usage: FakeUsage
    ) -> FakeResponse:
        if kind == "models":
            model = {
                "id": self._model,
                "object": "model",
                "created_at": 0,
                "status": "succeeded",
                "capabilities": {"chat_completion": True, "inference": True},
                "lifecycle_status": "generally-available",
            }
            return FakeResponse(200, {"object": "list", "data": [model]})
        prompt_tokens = sum(estimate_tokens(m["content"]) for m in request.body["messages"])
        completion = {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self._model,
            "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _NO_FILTERING}],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                    "content_filter_results": _NO_FILTERING,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": prompt_tokens + usage.completion_tokens,
            },
        }
        return FakeResponse(200, completion)

    def error(self, status: int, message: str) -> FakeResponse:
        if status == 401:
            return FakeResponse(401, {"statusCode": 401, "message": message})
        # Azure's codes vary by failure; the status, as a string, is the one it uses most.
        return FakeResponse(status, {"error": {"code": str(status), "message": message}})

    def prompt_text(self, request: FakeRequest) -> str:
        messages = request.body["messages"]
        return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def _invalid_chat_request(body: Any) -> str:
    """Why Azure would refuse `body` as a chat completion request, or ""."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' is a required property"
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return "each message must be an object with a string 'content'"
        if message.get("role") not in ("system", "user", "assistant"):
            return "each message must have role 'system', 'user' or 'assistant'"
    max_tokens = body.get("max_tokens", 1)
    if not isinstance(max_tokens, int) or max_tokens < 1:
        return "'max_tokens' must be a positive integer"
    temperature = body.get("temperature", 1.0)
    if not isinstance(temperature, int | float) or not 0.0 <= temperature <= 2.0:
        return "'temperature' must be between 0 and 2"
    return ""
