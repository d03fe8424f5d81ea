"""A fake OpenAI-compatible server: the OpenAI dialect on the fake provider engine.

    async with FakeOpenAIServer() as fake:
        fake.enqueue(FakeReply(status=429, headers={"Retry-After": "1"}))
        ...  # call fake.base_url; the first request gets the 429, later ones succeed

Like vLLM or LiteLLM behind a local URL, it takes requests with or without an
Authorization header, and rejects bodies the real API would reject.
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
from aiproc.server.fakes.engine import FakeProviderServer
from aiproc.server.fakes.faults import FakeReply
from aiproc.server.fakes.runner import run_fake_provider
from aiproc.server.providers.prompt import estimate_tokens
from aiproc.server.resilience.clock import Clock

__all__ = [
    "FAKE_MODEL",
    "FakeOpenAIServer",
    "FakeReply",
    "OpenAIDialect",
    "RecordedRequest",
    "run_fake_provider",
]

FAKE_MODEL = "fake-gpt"

RecordedRequest = FakeRequest
"""The name tests knew recorded requests by; they are the FakeRequests the dialect saw."""


class OpenAIDialect:
    """OpenAI's /v1/chat/completions and /v1/models, with its error body shape."""

    name = "openai"
    title = "OpenAI-compatible"

    def __init__(self) -> None:
        self._ids = itertools.count(1)

    def routes(self) -> Sequence[Route]:
        return (
            Route("POST", "/v1/chat/completions", "completion"),
            Route("GET", "/v1/models", "models"),
        )

    def base_url(self, host: str, port: int) -> str:
        return f"http://{host}:{port}/v1"

    def check_request(self, kind: RouteKind, request: FakeRequest) -> FakeError | None:
        if kind == "completion" and (problem := _invalid_chat_request(request.body)):
            return FakeError(400, problem)
        return None

    def success(
        self, kind: RouteKind, request: FakeRequest, content: str, usage: FakeUsage
    ) -> FakeResponse:
        if kind == "models":
            model = {"id": FAKE_MODEL, "object": "model", "created": 0, "owned_by": "aiproc-fake"}
            return FakeResponse(200, {"object": "list", "data": [model]})
        # A real server bills the whole prompt, system message included, not
        # just the user text the engine estimated.
        prompt_tokens = sum(estimate_tokens(m["content"]) for m in request.body["messages"])
        completion = {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.body["model"],
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
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
        error = {"message": message, "type": _error_type(status), "param": None, "code": None}
        return FakeResponse(status, {"error": error})

    def prompt_text(self, request: FakeRequest) -> str:
        messages = request.body["messages"]
        return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


class FakeOpenAIServer(FakeProviderServer):
    """Serves /v1/chat/completions and /v1/models: scripted replies first, then phases."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        latency: float = 0.0,
        *,
        record: bool = True,
        clock: Clock | None = None,
    ) -> None:
        """`record=False` keeps only counts, for long runs; `clock` times the phases."""
        super().__init__(OpenAIDialect(), host, port, latency, record=record, clock=clock)


def _error_type(status: int) -> str:
    if status == 429:
        return "rate_limit_exceeded"
    return "invalid_request_error" if status < 500 else "server_error"


def _invalid_chat_request(body: Any) -> str:
    """Why `body` is not a chat completion request a real server would take, or ""."""
    if not isinstance(body, dict):
        return "the body must be a JSON object"
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' must be a non-empty array"
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str):
            return "each message must be an object with a string 'content'"
        if message.get("role") not in ("system", "user", "assistant"):
            return "each message must have role 'system', 'user' or 'assistant'"
    return ""
