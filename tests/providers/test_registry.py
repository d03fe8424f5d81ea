from __future__ import annotations

import logging
from typing import Any

import httpx
import pytest

from aiproc.server.config import ConfigError, ProcessorConfig, ProviderConfig
from aiproc.server.core.errors import ProviderTimeout
from aiproc.server.fakes.openai_server import FakeOpenAIServer, FakeReply
from aiproc.server.providers.base import ChatMessage, CompletionRequest
from aiproc.server.providers.offline import OFFLINE_CONTEXT_WINDOW, OfflineProvider
from aiproc.server.providers.openai import OpenAIProvider
from aiproc.server.providers.registry import build_providers

PROCESSOR = ProcessorConfig(llm_model="gpt-4o-mini", max_concurrent_requests=4)
REQUEST = CompletionRequest(
    messages=(ChatMessage("user", "URL: u\n\nContent:\nHello there."),),
    model="",
    max_tokens=16,
    temperature=0.0,
    timeout=5.0,
)


def openai(name: str, base_url: str = "http://127.0.0.1:9/v1", **fields: Any) -> ProviderConfig:
    return ProviderConfig(name=name, kind="openai", base_url=base_url, **fields)


async def test_providers_come_in_priority_order_ties_in_config_order() -> None:
    configs = [
        openai("c", priority=2),
        openai("a", priority=1),
        openai("d", priority=3),
        openai("b", priority=1),
    ]

    providers = build_providers(configs, PROCESSOR, env={})
    try:
        assert [p.name for p in providers] == ["a", "b", "c", "d"]
        assert len(providers) == 4
        assert providers.config("c").priority == 2
        assert repr(providers) == "<ProviderSet [a, b, c, d]>"
    finally:
        await providers.aclose()


async def test_disabled_providers_are_skipped() -> None:
    configs = [openai("on"), openai("off", enabled=False, api_key_env="UNSET_KEY")]

    providers = build_providers(configs, PROCESSOR, env={})
    try:
        assert [p.name for p in providers] == ["on"]
    finally:
        await providers.aclose()


@pytest.mark.parametrize(
    "configs", [[], [openai("off", enabled=False)]], ids=["none", "all-disabled"]
)
async def test_without_an_enabled_provider_the_offline_one_is_used_with_a_warning(
    configs: list[ProviderConfig], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="aiproc.server.providers.registry"):
        providers = build_providers(configs, PROCESSOR, env={})
    try:
        [provider] = providers
        assert isinstance(provider, OfflineProvider)
        assert provider.name == "offline"
        assert providers.config("offline").kind == "offline"
        [record] = caplog.records
        assert record.levelno == logging.WARNING
        assert "no provider configured: using the offline provider" in record.getMessage()
        assert "does not call any language model" in record.getMessage()
    finally:
        await providers.aclose()


async def test_a_configured_offline_provider_keeps_its_name(
    caplog: pytest.LogCaptureFixture,
) -> None:
    configs = [ProviderConfig(name="local-summary", kind="offline")]

    with caplog.at_level(logging.WARNING):
        providers = build_providers(configs, PROCESSOR, env={})
    try:
        [provider] = providers
        assert isinstance(provider, OfflineProvider)
        assert provider.name == "local-summary"
        assert provider.context_window == OFFLINE_CONTEXT_WINDOW
        assert not caplog.records
    finally:
        await providers.aclose()


@pytest.mark.parametrize("env", [{}, {"SECOND_KEY": ""}], ids=["unset", "empty"])
def test_a_missing_key_variable_is_a_config_error_naming_the_field(env: dict[str, str]) -> None:
    configs = [
        openai("first", api_key_env="FIRST_KEY"),
        openai("second", api_key_env="SECOND_KEY"),
    ]

    with pytest.raises(ConfigError) as caught:
        build_providers(configs, PROCESSOR, env={"FIRST_KEY": "k1", **env})

    assert caught.value.field == "providers[1].api_key_env"
    assert "SECOND_KEY" in str(caught.value)
    assert "k1" not in str(caught.value)


def test_an_unknown_kind_is_a_config_error_naming_the_field() -> None:
    configs = [openai("fine"), ProviderConfig(name="odd", kind="anthropic")]

    with pytest.raises(ConfigError) as caught:
        build_providers(configs, PROCESSOR, env={})

    assert caught.value.field == "providers[1].kind"


async def test_model_and_context_window_come_from_config_or_defaults() -> None:
    configs = [
        openai("default-model"),
        openai("own-model", model="gpt-4"),
        openai("own-window", model="gpt-4", context_window=32_000),
    ]

    providers = build_providers(configs, PROCESSOR, env={})
    try:
        assert [(p.model, p.context_window) for p in providers] == [
            ("gpt-4o-mini", 128_000),
            ("gpt-4", 8_192),
            ("gpt-4", 32_000),
        ]
    finally:
        await providers.aclose()


async def test_two_providers_of_one_kind_stay_apart(fake: FakeOpenAIServer) -> None:
    configs = [
        openai("openai-a", fake.base_url, api_key_env="KEY_A", model="model-a"),
        openai("openai-b", fake.base_url, api_key_env="KEY_B", model="model-b"),
    ]

    providers = build_providers(configs, PROCESSOR, env={"KEY_A": "key-a", "KEY_B": "key-b"})
    try:
        assert all(isinstance(p, OpenAIProvider) for p in providers)
        for provider in providers:
            await provider.complete(REQUEST)
    finally:
        await providers.aclose()

    sent = [(r.headers["authorization"], r.body["model"]) for r in fake.requests]
    assert sent == [("Bearer key-a", "model-a"), ("Bearer key-b", "model-b")]


async def test_request_timeout_from_config_bounds_each_call(fake: FakeOpenAIServer) -> None:
    fake.enqueue(FakeReply(hang=True))
    providers = build_providers(
        [openai("slow", fake.base_url, request_timeout=0.1)], PROCESSOR, env={}
    )
    try:
        with pytest.raises(ProviderTimeout, match=r"0\.1s"):
            await providers.providers[0].complete(REQUEST)
    finally:
        await providers.aclose()


async def test_the_set_closes_the_client_it_made(fake: FakeOpenAIServer) -> None:
    providers = build_providers([openai("p", fake.base_url)], PROCESSOR, env={})
    [provider] = providers
    await provider.complete(REQUEST)

    await providers.aclose()

    with pytest.raises(RuntimeError, match="closed"):
        await provider.complete(REQUEST)


async def test_a_client_passed_in_stays_open(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    providers = build_providers([openai("p", fake.base_url)], PROCESSOR, env={}, http_client=client)
    [provider] = providers

    await providers.aclose()

    assert (await provider.complete(REQUEST)).content.startswith("Enhanced: ")
