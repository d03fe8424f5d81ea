"""The fake provider's Ollama dialect: the native POST /api/chat and GET /api/tags.

Like a local Ollama it needs no key, unless the dialect is given one (a
proxy in front of Ollama); then `Authorization: Bearer KEY` is required. It
checks a body with a model that is pulled (404 "model 'x' not found"
otherwise, as Ollama says), messages (none only loads the model: a 200 with
no content and done_reason "load") and `stream: false`: a real
Ollama streams when `stream` is left out, which this fake does not imitate,
so it refuses such a request instead of answering in a shape the client did
not ask for. Errors are Ollama's {"error": "..."}.
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

__all__ = ["FAKE_MODEL", "OllamaDialect"]

FAKE_MODEL = "llama-fake:latest"
_CREATED_AT = "2025-01-01T00:00:00Z"


class OllamaDialect:
    """An Ollama server with some models pulled, open or behind one Bearer key."""

    name = "ollama"
    title = "Ollama"

    def __init__(self, models: Sequence[str] = (FAKE_MODEL,), api_key: str | None = None) -> None:
        self._models = tuple(models)
        self._api_key = api_key

    def routes(self) -> Sequence[Route]:
        return (Route("POST", "/api/chat", "completion"), Route("GET", "/api/tags", "models"))

    def base_url(self, host: str, port: int) -> str:
        return f"http://{host}:{port}"

    def check_request(self, kind: RouteKind, request: FakeRequest) -> FakeError | None:
        if self._api_key is not None and (
            request.headers.get("authorization") != f"Bearer {self._api_key}"
        ):
            return FakeError(401, "unauthorized")
        if kind == "models":
            return None
        body = request.body
        if not isinstance(body, dict):
            return FakeError(400, "missing request body")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return FakeError(400, "model is required")
        if _tagged(model) not in {_tagged(m) for m in self._models}:
            return FakeError(404, f"model '{model}' not found")
        if body.get("stream") is not False:
            return FakeError(400, "this fake answers only non-streaming requests (stream: false)")
        if problem := _invalid_messages(body.get("messages")):
            return FakeError(400, problem)
        options = body.get("options", {})
        if not isinstance(options, dict):
            return FakeError(400, "options must be an object")
        return None

    def success(
        self, kind: RouteKind, request: FakeRequest, content: str, usage: FakeUsage
    ) -> FakeResponse:
        if kind == "models":
            models = [
                {
                    "name": _tagged(model),
                    "model": _tagged(model),
                    "modified_at": _CREATED_AT,
                    "size": 4_661_224_676,
                    "digest": "0" * 64,
                    "details": {"format": "gguf", "family": "llama", "parameter_size": "8B"},
                }
                for model in self._models
            ]
            return FakeResponse(200, {"models": models})
        body = request.body
        # No messages only loads the model, and Ollama says so instead of answering.
        loading = not body["messages"]
        answer = "" if loading else content
        return FakeResponse(
            200,
            {
                "model": body["model"],
                "created_at": _CREATED_AT,
                "message": {"role": "assistant", "content": answer},
                "done": True,
                "done_reason": "load" if loading else "stop",
                "total_duration": 1_000_000,
                "load_duration": 1_000,
                "prompt_eval_count": sum(estimate_tokens(m["content"]) for m in body["messages"]),
                "prompt_eval_duration": 1_000,
                "eval_count": estimate_tokens(answer),
                "eval_duration": 1_000,
            },
        )

    def error(self, status: int, message: str) -> FakeResponse:
        return FakeResponse(status, {"error": message})

    def prompt_text(self, request: FakeRequest) -> str:
        messages = request.body["messages"]
        return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def _tagged(name: str) -> str:
    """Ollama reads a model name without a tag as the ":latest" one."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def _invalid_messages(messages: Any) -> str:
    """Why Ollama would refuse `messages` for a chat, or ""."""
    if not isinstance(messages, list):
        return "messages must be an array"
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return "each message must be an object with a string content"
        if message.get("role") not in ("system", "user", "assistant", "tool"):
            return f"invalid role: {message.get('role')!r}"
    return ""
