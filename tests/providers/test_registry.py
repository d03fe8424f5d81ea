from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiproc.server.config import Config, ConfigError, ProcessorConfig, ProviderConfig, validate
from aiproc.server.core.errors import ProviderTimeout
from aiproc.server.fakes.anthropic_dialect import AnthropicDialect
from aiproc.server.fakes.azure_dialect import AzureDialect
from aiproc.server.fakes.engine import FakeProviderServer
from aiproc.server.fakes.gemini_dialect import GeminiDialect
from aiproc.server.fakes.ollama_dialect import OllamaDialect
from aiproc.server.fakes.openai_server import FakeOpenAIServer, FakeReply
from aiproc.server.providers.anthropic import AnthropicProvider
from aiproc.server.providers.azure_openai import AzureOpenAIProvider
from aiproc.server.providers.base import ChatMessage, CompletionRequest
from aiproc.server.providers.gemini import GeminiProvider
from aiproc.server.providers.offline import OFFLINE_CONTEXT_WINDOW, OfflineProvider
from aiproc.server.providers.ollama import OllamaProvider
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
    configs = [openai("fine"), ProviderConfig(name="odd", kind="bedrock")]

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


def vendor(name: str, kind: str, **fields: Any) -> ProviderConfig:
    return ProviderConfig(name=name, kind=kind, **fields)


async def test_each_vendor_kind_builds_its_provider_at_the_public_address_by_default() -> None:
    configs = [
        vendor("claude", "anthropic", api_key_env="ANTHROPIC_KEY", model="claude-sonnet-4-0"),
        vendor("gem", "gemini", api_key_env="GEMINI_KEY", model="gemini-2.0-flash"),
        vendor("local", "ollama", model="llama3.1"),
        vendor(
            "azure",
            "azure_openai",
            base_url="https://res.openai.azure.com",
            api_key_env="AZURE_KEY",
            model="gpt-4o",
        ),
    ]
    env = {"ANTHROPIC_KEY": "a-key", "GEMINI_KEY": "g-key", "AZURE_KEY": "z-key"}

    providers = build_providers(configs, PROCESSOR, env=env)
    try:
        claude, gem, local, azure = providers
        assert isinstance(claude, AnthropicProvider)
        assert isinstance(gem, GeminiProvider)
        assert isinstance(local, OllamaProvider)
        assert isinstance(azure, AzureOpenAIProvider)
        assert [p.kind for p in providers] == ["anthropic", "gemini", "ollama", "azure_openai"]
        assert "base_url='https://api.anthropic.com'" in repr(claude)
        assert "base_url='https://generativelanguage.googleapis.com/v1beta'" in repr(gem)
        assert "base_url='http://127.0.0.1:11434'" in repr(local)
        # Azure's deployment defaults to the model; Ollama's window to what a small GPU holds.
        assert azure.deployment == "gpt-4o"
        assert (local.context_window, azure.context_window) == (8192, 128_000)
        assert not [p for p in providers for key in env.values() if key in repr(p)]
    finally:
        await providers.aclose()


@pytest.mark.parametrize("kind", ["anthropic", "azure_openai", "gemini"])
@pytest.mark.parametrize("env", [{}, {"VENDOR_KEY": ""}], ids=["unset", "empty"])
def test_vendors_that_need_a_key_refuse_a_missing_one(kind: str, env: dict[str, str]) -> None:
    base_url = "https://res.openai.azure.com"
    configs = [openai("fine"), vendor("v", kind, base_url=base_url, api_key_env="VENDOR_KEY")]

    with pytest.raises(ConfigError) as caught:
        build_providers(configs, PROCESSOR, env=env)

    assert caught.value.field == "providers[1].api_key_env"
    assert "VENDOR_KEY" in str(caught.value)


@pytest.mark.parametrize("kind", ["anthropic", "azure_openai", "gemini"])
def test_vendors_that_need_a_key_refuse_a_config_without_api_key_env(kind: str) -> None:
    configs = [vendor("v", kind, base_url="https://res.openai.azure.com")]

    with pytest.raises(ConfigError) as caught:
        build_providers(configs, PROCESSOR, env={})

    assert caught.value.field == "providers[0].api_key_env"
    assert f"required for kind {kind}" in str(caught.value)


async def test_vendor_settings_reach_the_wire(client: httpx.AsyncClient) -> None:
    ollama_dialect = OllamaDialect(models=(PROCESSOR.llm_model,), api_key="proxy-key")
    async with (
        FakeProviderServer(AnthropicDialect(api_key="a-key")) as anthropic_fake,
        FakeProviderServer(AzureDialect(api_key="z-key", deployment="prod")) as azure_fake,
        FakeProviderServer(GeminiDialect(api_key="g-key", models=("gemini-x",))) as gemini_fake,
        FakeProviderServer(ollama_dialect) as ollama_fake,
    ):
        configs = [
            vendor(
                "claude",
                "anthropic",
                base_url=anthropic_fake.base_url,
                api_key_env="A",
                api_version="2024-02-02",
            ),
            vendor(
                "azure",
                "azure_openai",
                base_url=azure_fake.base_url,
                api_key_env="Z",
                deployment="prod",
                api_version="2024-06-01",
            ),
            vendor(
                "gem", "gemini", base_url=gemini_fake.base_url, api_key_env="G", model="gemini-x"
            ),
            vendor(
                "local",
                "ollama",
                base_url=ollama_fake.base_url,
                api_key_env="O",
                context_window=4096,
            ),
        ]
        env = {"A": "a-key", "Z": "z-key", "G": "g-key", "O": "proxy-key"}
        providers = build_providers(configs, PROCESSOR, env=env, http_client=client)
        for provider in providers:
            completion = await provider.complete(REQUEST)
            assert completion.content.startswith("Enhanced: "), provider.name

    [claude] = anthropic_fake.requests
    assert claude.headers["anthropic-version"] == "2024-02-02"
    assert claude.body["model"] == PROCESSOR.llm_model
    [azure] = azure_fake.requests
    assert azure.query == {"api-version": "2024-06-01"}
    [gem] = gemini_fake.requests
    assert gem.path == "/v1beta/models/gemini-x:generateContent"
    [local] = ollama_fake.requests
    assert local.headers["authorization"] == "Bearer proxy-key"
    assert local.body["options"]["num_ctx"] == 4096


KEY_IN_FILE = "sk-file-key-Q2w3E4r5T6y7"


async def test_a_key_file_is_read_once_with_its_trailing_newline_dropped(
    tmp_path: Path, fake: FakeOpenAIServer
) -> None:
    key_file = tmp_path / "openai.key"
    key_file.write_text(KEY_IN_FILE + "\r\n")
    configs = [openai("filed", fake.base_url, api_key_file=str(key_file))]
    providers = build_providers(configs, PROCESSOR, env={})
    try:
        key_file.unlink()  # read at start-up: the file is not needed again
        [provider] = providers
        await provider.complete(REQUEST)
    finally:
        await providers.aclose()
    assert fake.requests[-1].headers["authorization"] == f"Bearer {KEY_IN_FILE}"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (None, "cannot read"),
        (b"", "is empty"),
        (b"\n\n", "is empty"),
        (b"\xff" + KEY_IN_FILE.encode(), "not UTF-8"),
        (KEY_IN_FILE.encode() * 1000, "not a key file"),
        (b"sk-two words\n", "spaces, control or non-ASCII"),
        (b"sk-\x1bkey\n", "spaces, control or non-ASCII"),
    ],
)
def test_an_unusable_key_file_is_one_error_naming_the_field_never_the_key(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    key_file = tmp_path / "key"
    if content is not None:
        key_file.write_bytes(content)
    configs = [vendor("claude", "anthropic", api_key_file=str(key_file))]

    with pytest.raises(ConfigError) as caught:
        build_providers(configs, PROCESSOR, env={})

    assert caught.value.field == "providers[0].api_key_file"
    assert reason in str(caught.value)
    assert str(key_file) in str(caught.value)
    for piece in ("sk-", "Q2w3", "words", "\\xff", "\xff"):
        assert piece not in str(caught.value).replace(str(key_file), "")


def test_a_key_from_the_environment_is_checked_as_well() -> None:
    configs = [openai("spaced", api_key_env="SPACED")]
    with pytest.raises(ConfigError) as caught:
        build_providers(configs, PROCESSOR, env={"SPACED": "sk-abc def"})
    assert caught.value.field == "providers[0].api_key_env"
    assert "abc" not in str(caught.value)


def test_a_key_needs_exactly_one_source() -> None:
    both = vendor("claude", "anthropic", api_key_env="A_KEY", api_key_file="/run/key")
    with pytest.raises(ConfigError) as caught:
        validate(Config(providers=(both,)))
    assert caught.value.field == "providers[0].api_key_file"
    assert "not both" in str(caught.value)
