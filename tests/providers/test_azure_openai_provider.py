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
from aiproc.server.fakes.azure_dialect import FAKE_DEPLOYMENT, FAKE_MODEL, AzureDialect
from aiproc.server.fakes.engine import FakeProviderServer
from aiproc.server.fakes.faults import FakeReply, HttpError, MalformedJson, WrongContentType
from aiproc.server.providers.azure_openai import AzureOpenAIProvider
from tests.providers.vendor_support import (
    MESSAGES,
    assert_hidden,
    complete_echo,
    failure,
    fake_fixture,
    make_request,
    provider_maker,
)

KEY = "0123456789abcdef0123456789SECRET"
CHAT_PATH = f"/openai/deployments/{FAKE_DEPLOYMENT}/chat/completions"

fake = fake_fixture(lambda: AzureDialect(api_key=KEY))
make_provider = provider_maker(
    AzureOpenAIProvider,
    api_key=KEY,
    deployment=FAKE_DEPLOYMENT,
    model="gpt-4o",
    context_window=128_000,
)


async def test_success_posts_to_the_deployment_with_api_key_and_version(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    provider = make_provider(fake, client)

    # The deployment's model, as Azure names it, not the configured one.
    sent = await complete_echo(provider, fake, model=FAKE_MODEL, finish_reason="stop")

    assert (sent.method, sent.path) == ("POST", CHAT_PATH)
    assert sent.query == {"api-version": "2024-10-21"}
    assert sent.headers["api-key"] == KEY
    assert "authorization" not in sent.headers
    # The deployment chooses the model: no model field, system prompt as a message.
    assert sent.body == {
        "messages": [{"role": m.role, "content": m.content} for m in MESSAGES],
        "max_tokens": 256,
        "temperature": 0.2,
    }


async def test_the_deployment_defaults_to_the_model_and_api_version_is_configurable(
    client: httpx.AsyncClient,
) -> None:
    async with FakeProviderServer(AzureDialect(api_key=KEY, deployment="gpt-4o")) as fake:
        provider = make_provider(fake, client, deployment="", api_version="2024-06-01")

        await provider.complete(make_request(model="ignored-by-azure"))

    [sent] = fake.requests
    assert sent.path == "/openai/deployments/gpt-4o/chat/completions"
    assert sent.query == {"api-version": "2024-06-01"}
    assert provider.deployment == "gpt-4o"


async def test_a_deployment_that_does_not_exist_is_an_invalid_request(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    error = await failure(make_provider(fake, client, deployment="nope").complete(make_request()))

    assert isinstance(error, InvalidRequest)
    assert "HTTP 404: The API deployment for this resource does not exist" in str(error)


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (HttpError(429, retry_after_ms=1500), 1.5),
        (HttpError(429, retry_after=6), 6.0),
    ],
)
async def test_429_is_rate_limited_with_azures_retry_hint(
    fake: FakeProviderServer, client: httpx.AsyncClient, fault: HttpError, expected: float
) -> None:
    fake.fail_next(1, fault=fault)

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, RateLimited)
    assert error.retry_after == expected
    assert str(error) == "primary: HTTP 429: fake error 429 (429)"


async def test_azures_token_reset_in_plain_seconds_is_a_retry_hint(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    headers = {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "37"}
    fake.enqueue(FakeReply(status=429, headers=headers))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, RateLimited)
    assert error.retry_after == 37.0


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (500, TransientError),
        (503, TransientError),
        (400, InvalidRequest),
        (401, AuthenticationFailed),
        (403, AuthenticationFailed),
    ],
)
async def test_status_codes_map_to_domain_errors(
    fake: FakeProviderServer,
    client: httpx.AsyncClient,
    status: int,
    error_type: type[Exception],
) -> None:
    fake.fail_next(1, status=status)

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert type(error) is error_type
    assert f"primary: HTTP {status}: fake error {status}" in str(error)


async def test_a_wrong_key_gets_the_gateways_401_without_showing_the_key(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    wrong = "fedcba9876543210fedcba9876543210"
    provider = make_provider(fake, client, api_key=wrong)

    error = await failure(provider.complete(make_request()))

    assert isinstance(error, AuthenticationFailed)
    assert str(error).startswith("primary: HTTP 401: Access denied due to invalid subscription key")
    assert_hidden(wrong, str(error), repr(provider))


async def test_a_filtered_prompt_is_an_invalid_request(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    body = {
        "error": {
            "message": "The response was filtered due to the prompt triggering Azure "
            "OpenAI's content management policy.",
            "type": None,
            "param": "prompt",
            "code": "content_filter",
            "status": 400,
        }
    }
    fake.enqueue(FakeReply(status=400, body=body))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, InvalidRequest)
    assert str(error).endswith("(content_filter)")


async def test_a_filtered_answer_is_an_invalid_request_not_a_retry(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    choice = {"index": 0, "message": {"role": "assistant"}, "finish_reason": "content_filter"}
    fake.enqueue(FakeReply(body={"choices": [choice], "model": FAKE_MODEL}))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, InvalidRequest)
    assert not error.retryable
    assert "content filter" in str(error)


@pytest.mark.parametrize("reply", [FakeReply(fault=MalformedJson()), FakeReply(body={"x": 1})])
async def test_unusable_answers_are_bad_responses(
    fake: FakeProviderServer, client: httpx.AsyncClient, reply: FakeReply
) -> None:
    fake.enqueue(reply)

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, BadResponse)


async def test_check_health_lists_the_resources_models_and_sends_no_completion(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    await make_provider(fake, client).check_health(timeout=5.0)

    [sent] = fake.requests
    assert (sent.method, sent.path, sent.query) == (
        "GET",
        "/openai/models",
        {"api-version": "2024-10-21"},
    )
    assert sent.headers["api-key"] == KEY


@pytest.mark.parametrize(
    ("reply", "error_type"),
    [
        (FakeReply(status=503), TransientError),
        (FakeReply(status=401), AuthenticationFailed),
        (FakeReply(fault=WrongContentType()), BadResponse),
    ],
)
async def test_an_unhealthy_resource_fails_the_check(
    fake: FakeProviderServer, client: httpx.AsyncClient, reply: FakeReply, error_type: type
) -> None:
    fake.enqueue(reply)

    error = await failure(make_provider(fake, client).check_health(timeout=5.0))

    assert type(error) is error_type
    assert [r.method for r in fake.requests] == ["GET"]


def test_repr_shows_name_deployment_and_url_but_never_the_key(client: httpx.AsyncClient) -> None:
    provider = AzureOpenAIProvider(
        name="azure",
        base_url="https://res.openai.azure.com/",
        api_key=KEY,
        deployment="prod-4o",
        model="gpt-4o",
        context_window=128_000,
        http_client=client,
    )

    assert repr(provider) == (
        "<AzureOpenAIProvider name='azure' deployment='prod-4o' "
        "base_url='https://res.openai.azure.com'>"
    )
    assert (provider.kind, provider.model) == ("azure_openai", "gpt-4o")
