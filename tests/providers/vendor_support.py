"""What the vendor provider tests share: a prompt, a request, a fake server fixture, a provider
maker, the standard successful call, the error a call raises and the check that a key stays
hidden."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import httpx
import pytest

from aiproc.server.core.errors import ProviderError
from aiproc.server.core.models import TokenUsage
from aiproc.server.fakes.dialect import Dialect, FakeRequest
from aiproc.server.fakes.engine import FakeProviderServer
from aiproc.server.providers.base import ChatMessage, CompletionRequest, Provider
from aiproc.server.providers.prompt import estimate_tokens

SYSTEM = "You are helpful."
USER = "URL: https://example.com\n\nContent:\nSome page text."
MESSAGES = (ChatMessage("system", SYSTEM), ChatMessage("user", USER))

P = TypeVar("P", bound=Provider)


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


def fake_fixture(dialect: Callable[[], Dialect]) -> Any:
    """A `fake` fixture: a FakeProviderServer speaking the dialect `dialect()` makes."""

    @pytest.fixture
    async def fake() -> AsyncIterator[FakeProviderServer]:
        """A fake vendor server on a free port, stopped after the test."""
        async with FakeProviderServer(dialect()) as server:
            yield server

    return fake


def provider_maker(vendor: Callable[..., P], **defaults: Any) -> Callable[..., P]:
    """`make_provider(fake, client, **overrides)` for one vendor: a provider named "primary" at
    the fake's address on `client`, built with `defaults` and then `overrides`."""

    def make_provider(fake: FakeProviderServer, client: httpx.AsyncClient, **overrides: Any) -> P:
        base = {"name": "primary", "base_url": fake.base_url, "http_client": client}
        return vendor(**{**base, **defaults, **overrides})

    return make_provider


async def complete_echo(
    provider: Provider, fake: FakeProviderServer, *, model: str, finish_reason: str
) -> FakeRequest:
    """Completes `make_request()`, checks the answer is the fake's echo of USER with the fake's
    token counts, and returns the one request the fake saw."""
    assert isinstance(provider, Provider)

    completion = await provider.complete(make_request())

    assert completion.content == "Enhanced: " + USER
    assert completion.model == model
    assert completion.finish_reason == finish_reason
    assert completion.usage == TokenUsage(
        sum(estimate_tokens(m.content) for m in MESSAGES), estimate_tokens(completion.content)
    )
    [sent] = fake.requests
    return sent


async def failure(call: Awaitable[object], *, provider: str = "primary") -> ProviderError:
    """The ProviderError `call` raises; fails the test if it returns or names another provider."""
    with pytest.raises(ProviderError) as caught:
        await call
    assert caught.value.provider == provider
    return caught.value


def assert_hidden(key: str, *texts: str) -> None:
    """Fails when `key`, or the "SECRET" every test key here ends in, shows in any of `texts`."""
    for text in texts:
        assert key not in text
        assert "SECRET" not in text
