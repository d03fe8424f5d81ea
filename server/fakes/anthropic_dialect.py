"""The fake provider's Anthropic dialect: POST /v1/messages and GET /v1/models.

It checks what the real Messages API checks before answering: the
`x-api-key` header (equal to the dialect's key, "aiproc-fake-anthropic-key"
unless one is given), the `anthropic-version` header, and a body with a model,
a positive integer `max_tokens`, user and assistant `messages` (a system
role there is refused: it belongs in `system`) and a temperature within 0-1.
Errors come as Anthropic sends them:

    {"type": "error", "error": {"type": "rate_limit_error", "message": "..."},
     "request_id": "req_..."}
"""

from __future__ import annotations

import itertools
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

__all__ = ["FAKE_API_KEY", "FAKE_MODEL", "AnthropicDialect"]

FAKE_API_KEY = "aiproc-fake-anthropic-key"
FAKE_MODEL = "claude-fake-1"

# The error.type Anthropic gives each status; other 4xx are invalid_request_error.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class AnthropicDialect:
    """Anthropic's Messages API and model list, accepting one API key."""

    name = "anthropic"
    title = "Anthropic Messages API"

    def __init__(self, api_key: str = FAKE_API_KEY) -> None:
        self._api_key = api_key
        self._ids = itertools.count(1)

    def routes(self) -> Sequence[Route]:
        return (Route("POST", "/v1/messages", "completion"), Route("GET", "/v1/models", "models"))

    def base_url(self, host: str, port: int) -> str:
        return f"http://{host}:{port}"

    def check_request(self, kind: RouteKind, request: FakeRequest) -> FakeError | None:
        key = request.headers.get("x-api-key")
        if not key:
            return FakeError(401, "x-api-key header is required")
        if key != self._api_key:
            return FakeError(401, "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return FakeError(400, "anthropic-version: header is required")
        if kind == "completion" and (problem := _invalid_message_request(request.body)):
            return FakeError(400, problem)
        return None

    def success(
        self, kind: RouteKind, request: FakeRequest, content: str, usage: FakeUsage
    ) -> FakeResponse:
        if kind == "models":
            model = {
                "type": "model",
                "id": FAKE_MODEL,
                "display_name": "Claude Fake",
                "created_at": "2025-01-01T00:00:00Z",
            }
            page = {"data": [model], "has_more": False, "first_id": FAKE_MODEL}
            return FakeResponse(200, {**page, "last_id": FAKE_MODEL})
        body = request.body
        # Anthropic bills the system prompt too, not only the user text.
        input_tokens = estimate_tokens(_text(body.get("system", ""))) + sum(
            estimate_tokens(_text(m["content"])) for m in body["messages"]
        )
        message = {
            "id": f"msg_fake{next(self._ids):06d}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": [{"type": "text", "text": content}],
            "stop_reason": "end_turn",
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": usage.completion_tokens},
        }
        return FakeResponse(200, message)

    def error(self, status: int, message: str) -> FakeResponse:
        kind = _ERROR_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
        body = {
            "type": "error",
            "error": {"type": kind, "message": message},
            "request_id": f"req_fake{next(self._ids):06d}",
        }
        return FakeResponse(status, body)

    def prompt_text(self, request: FakeRequest) -> str:
        messages = request.body["messages"]
        return next((_text(m["content"]) for m in reversed(messages) if m["role"] == "user"), "")


def _text(content: Any) -> str:
    """The text of a content field: a string, or the text of its text blocks."""
    if isinstance(content, str):
        return content
    return "".join(block.get("text", "") for block in content if block.get("type") == "text")


def _invalid_message_request(body: Any) -> str:
    """Why the Messages API would refuse `body`, or ""."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model: Field required"
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Field required, an integer of at least 1"
    temperature = body.get("temperature", 1.0)
    if not isinstance(temperature, int | float) or not 0.0 <= temperature <= 1.0:
        return "temperature: Input should be less than or equal to 1"
    if not isinstance(body.get("system", ""), str | list):
        return "system: Input should be a string or a list of text blocks"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
            # A "system" role here is the classic mistake: it belongs in `system`.
            return f"messages.{index}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        if not isinstance(content, str | list) or not content:
            return f"messages.{index}.content: a non-empty string or list of blocks is required"
        if isinstance(content, list) and not all(
            isinstance(block, dict) and isinstance(block.get("type"), str) for block in content
        ):
            return f"messages.{index}.content: each block needs a type"
    return ""
