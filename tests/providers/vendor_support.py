"""What the vendor provider tests share: a prompt, a request, and the error a call raises."""

from __future__ import annotations

from collections.abc import Awaitable

import pytest

from aiproc.server.core.errors import ProviderError
from aiproc.server.providers.base import ChatMessage, CompletionRequest

SYSTEM = "You are helpful."
USER = "URL: https://example.com\n\nContent:\nSome page text."
MESSAGES = (ChatMessage("system", SYSTEM), ChatMessage("user", USER))


def make_request(
    *,
    messages: tuple[ChatMessage, ...] = MESSAGES,
    model: str = "",
    temperature: float = 0.2,
    timeout: float = 5.0,
) -> CompletionRequest:
    return CompletionRequest(
        messages=messages, model=model, max_tokens=256, temperature=temperature, timeout=timeout
    )


async def failure(call: Awaitable[object], *, provider: str = "primary") -> ProviderError:
    """The ProviderError `call` raises; fails the test if it returns or names another provider."""
    with pytest.raises(ProviderError) as caught:
        await call
    assert caught.value.provider == provider
    return caught.value
