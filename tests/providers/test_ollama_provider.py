from __future__ import annotations

import httpx
import pytest

from aiproc.server.core.errors import (
    AuthenticationFailed,
    BadResponse,
    InvalidRequest,
    RateLimited,
    TransientError,
)
from aiproc.server.core.models import TokenUsage
from aiproc.server.fakes.engine import FakeProviderServer
from aiproc.server.fakes.faults import EmptyBody, FakeReply, HttpError, MalformedJson
from aiproc.server.fakes.ollama_dialect import OllamaDialect
from aiproc.server.providers.ollama import OllamaProvider
from tests.providers.vendor_support import (
    MESSAGES,
    assert_hidden,
    complete_echo,
    failure,
    fake_fixture,
    make_request,
    provider_maker,
)

MODEL = "llama3.1"
PROXY_KEY = "proxy-key-0123456789SECRET"

fake = fake_fixture(lambda: OllamaDialect(models=("llama3.1:latest", "qwen2.5:7b")))
make_provider = provider_maker(OllamaProvider, model=MODEL, context_window=8192)


async def test_success_posts_a_native_chat_without_streaming_or_a_key(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    provider = make_provider(fake, client)

    sent = await complete_echo(provider, fake, model=MODEL, finish_reason="stop")

    assert (sent.method, sent.path) == ("POST", "/api/chat")
    assert "authorization" not in sent.headers
    # The system prompt is a message; num_ctx keeps Ollama from cutting the prompt's start.
    assert sent.body == {
        "model": MODEL,
        "messages": [{"role": m.role, "content": m.content} for m in MESSAGES],
        "stream": False,
        "options": {"num_predict": 256, "temperature": 0.2, "num_ctx": 8192},
    }


async def test_a_configured_key_is_sent_as_bearer_for_a_proxy(client: httpx.AsyncClient) -> None:
    async with FakeProviderServer(OllamaDialect(models=(MODEL,), api_key=PROXY_KEY)) as fake:
        keyed = make_provider(fake, client, api_key=PROXY_KEY)
        keyless = make_provider(fake, client)

        completion = await keyed.complete(make_request())
        error = await failure(keyless.complete(make_request()))

    assert completion.content.startswith("Enhanced: ")
    assert fake.requests[0].headers["authorization"] == f"Bearer {PROXY_KEY}"
    assert isinstance(error, AuthenticationFailed)
    assert str(error) == "primary: HTTP 401: unauthorized"
    assert_hidden(PROXY_KEY, repr(keyed))


async def test_a_model_that_is_not_pulled_is_an_invalid_request(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    error = await failure(make_provider(fake, client).complete(make_request(model="mistral")))

    assert isinstance(error, InvalidRequest)
    assert str(error) == "primary: HTTP 404: model 'mistral' not found"


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (500, TransientError),
        (502, TransientError),
        (503, TransientError),
        (400, InvalidRequest),
        (404, InvalidRequest),
        (401, AuthenticationFailed),
    ],
)
async def test_status_codes_map_to_domain_errors_with_ollamas_message(
    fake: FakeProviderServer,
    client: httpx.AsyncClient,
    status: int,
    error_type: type[Exception],
) -> None:
    fake.fail_next(1, status=status)

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert type(error) is error_type
    assert str(error) == f"primary: HTTP {status}: fake error {status}"


async def test_429_from_a_proxy_is_rate_limited_with_its_hint(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    fake.fail_next(1, fault=HttpError(429, retry_after=4))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, RateLimited)
    assert error.retry_after == 4.0


@pytest.mark.parametrize(
    "reply",
    [
        FakeReply(fault=MalformedJson()),
        FakeReply(fault=EmptyBody()),
        FakeReply(body={"message": {"role": "assistant", "content": ""}, "done_reason": "load"}),
        FakeReply(body={"error": "an error in a 200"}),
    ],
)
async def test_unusable_answers_are_bad_responses(
    fake: FakeProviderServer, client: httpx.AsyncClient, reply: FakeReply
) -> None:
    fake.enqueue(reply)

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, BadResponse)


async def test_missing_counts_are_zero_and_the_done_reason_is_kept(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    body = {"model": "llama3.1:latest", "message": {"content": "ok"}, "done_reason": "length"}
    fake.enqueue(FakeReply(body=body))

    completion = await make_provider(fake, client).complete(make_request())

    assert (completion.content, completion.model, completion.finish_reason) == (
        "ok",
        "llama3.1:latest",
        "length",
    )
    assert completion.usage == TokenUsage(0, 0)


async def test_check_health_lists_local_models_and_sends_no_chat(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    # "llama3.1" is the "llama3.1:latest" the fake has pulled.
    await make_provider(fake, client).check_health(timeout=5.0)
    await make_provider(fake, client, model="qwen2.5:7b").check_health(timeout=5.0)

    assert [(r.method, r.path) for r in fake.requests] == [("GET", "/api/tags")] * 2


async def test_a_model_that_is_not_pulled_fails_the_health_check(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    error = await failure(make_provider(fake, client, model="qwen2.5").check_health(timeout=5.0))

    assert isinstance(error, InvalidRequest)
    assert "model 'qwen2.5' is not pulled" in str(error)


@pytest.mark.parametrize(
    ("reply", "error_type"),
    [
        (FakeReply(status=500), TransientError),
        (FakeReply(body={"models": "nope"}), BadResponse),
        (FakeReply(fault=MalformedJson()), BadResponse),
    ],
)
async def test_an_unhealthy_server_fails_the_check(
    fake: FakeProviderServer, client: httpx.AsyncClient, reply: FakeReply, error_type: type
) -> None:
    fake.enqueue(reply)

    error = await failure(make_provider(fake, client).check_health(timeout=5.0))

    assert type(error) is error_type


async def test_a_stopped_server_is_transient(client: httpx.AsyncClient) -> None:
    async with FakeProviderServer(OllamaDialect()) as fake:
        provider = make_provider(fake, client)

    error = await failure(provider.check_health(timeout=5.0))

    assert type(error) is TransientError
    assert "network error" in str(error)


def test_repr_shows_name_model_and_url_but_never_the_key(client: httpx.AsyncClient) -> None:
    provider = OllamaProvider(
        name="local",
        base_url="http://127.0.0.1:11434/",
        model=MODEL,
        context_window=8192,
        http_client=client,
        api_key=PROXY_KEY,
    )

    assert repr(provider) == (
        "<OllamaProvider name='local' model='llama3.1' base_url='http://127.0.0.1:11434'>"
    )
    assert (provider.kind, provider.context_window) == ("ollama", 8192)
