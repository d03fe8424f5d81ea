"""What every provider is: a named thing that turns a CompletionRequest into a Completion.

A provider translates the domain request into one vendor's HTTP request and
the answer (or error) back into a `Completion` or a `ProviderError` from
`aiproc.server.core.errors`. It never retries, sleeps or rate-limits: the
runner does that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from aiproc.server.core.models import TokenUsage


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    """"system", "user" or "assistant"."""
    content: str


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    messages: tuple[ChatMessage, ...]
    model: str
    max_tokens: int
    temperature: float
    timeout: float
    """Seconds this one call may take."""


@dataclass(frozen=True, slots=True)
class Completion:
    content: str
    model: str
    """The model the provider says answered."""
    usage: TokenUsage
    finish_reason: str = ""


@runtime_checkable
class Provider(Protocol):
    """One configured LLM endpoint."""

    @property
    def name(self) -> str:
        """The unique name from the config."""
        ...

    @property
    def kind(self) -> str:
        """The vendor kind, e.g. "openai" or "offline"."""
        ...

    @property
    def model(self) -> str:
        """The model used when a task does not name one."""
        ...

    @property
    def context_window(self) -> int:
        """Tokens the model accepts, prompt and completion together."""
        ...

    async def complete(self, request: CompletionRequest) -> Completion:
        """Runs one completion; raises a ProviderError subclass on failure."""
        ...

    # A timeout argument, not asyncio.timeout around the call: a health check
    # must never be unbounded, so the bound is part of the call.
    async def check_health(self, timeout: float) -> None:  # noqa: ASYNC109
        """Asks a cheap endpoint (e.g. the model list) whether the API answers; never a paid
        completion. Returns normally when healthy; raises a ProviderError subclass otherwise."""
        ...

    async def aclose(self) -> None:
        """Releases connections."""
        ...
