"""Every vendor provider against a fake answering garbage: each call fails with a ProviderError.

A garbage answer that escaped as any other exception would end its task as
INTERNAL; one that passed for an answer would be a result made of garbage.
"""

from __future__ import annotations

import asyncio
import collections

import pytest

from aiproc.server.config import ProcessorConfig, ProviderConfig
from aiproc.server.core.errors import ProviderError
from aiproc.server.fakes.engine import FakeProviderServer
from aiproc.server.fakes.faults import Garbage, parse_fault
from aiproc.server.fakes.garbage import KINDS
from aiproc.server.fakes.phases import Phase
from aiproc.server.fakes.registry import create_dialect
from aiproc.server.providers.registry import build_providers
from tests.providers.vendor_support import make_request

CALLS = 150
KEY = "garbage-test-key-9d8c7b6a"


@pytest.mark.parametrize("dialect", ["openai", "anthropic", "azure_openai", "ollama", "gemini"])
async def test_every_garbage_answer_is_a_classified_provider_error(dialect: str) -> None:
    async with FakeProviderServer(create_dialect(dialect)) as fake:
        fake.set_phase(Phase(Garbage(seed=7)))
        config = ProviderConfig(
            name="target", kind=dialect, base_url=fake.base_url, api_key_env="KEY", model="m"
        )
        providers = build_providers([config], ProcessorConfig(), env={"KEY": KEY})
        try:
            [provider] = providers
            calls = [provider.complete(make_request(timeout=10.0)) for _ in range(CALLS)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        finally:
            await providers.aclose()
        kinds = {k for k in fake.stats().outcomes if k.startswith("garbage:")}
    unclassified = [o for o in outcomes if not isinstance(o, ProviderError)]
    assert unclassified == []
    by_type = collections.Counter(type(o).__name__ for o in outcomes)
    assert len(by_type) >= 3, by_type  # several classes, not one catch-all
    for error in outcomes:
        message = str(error)
        assert len(message) < 400
        assert message.isprintable()
        assert KEY not in message
    assert kinds == {f"garbage:{kind}" for kind in KINDS}


def test_garbage_and_echo_are_spelled_like_other_faults() -> None:
    assert parse_fault("garbage") == Garbage(0)
    assert parse_fault("garbage:seed=12").spec == "garbage:seed=12"
    assert parse_fault("echo:status=403").spec == "echo:status=403"
    with pytest.raises(ValueError, match="unknown option"):
        parse_fault("garbage:rate=1")
