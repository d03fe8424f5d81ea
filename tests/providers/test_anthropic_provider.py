from __future__ import annotations

import datetime
from typing import Any

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
from aiproc.server.fakes.anthropic_dialect import FAKE_MODEL, AnthropicDialect
from aiproc.server.fakes.engine import FakeProviderServer
from aiproc.server.fakes.faults import (
    EmptyBody,
    FakeReply,
    HttpError,
    MalformedJson,
    WrongContentType,
)
from aiproc.server.providers.anthropic import AnthropicProvider, anthropic_retry_after
from aiproc.server.providers.base import ChatMessage
from tests.providers.vendor_support import (
    SYSTEM,
    USER,
    assert_hidden,
    complete_echo,
    failure,
    fake_fixture,
    make_request,
    provider_maker,
)

KEY = "sk-ant-api03-test0123456789SECRET"

fake = fake_fixture(lambda: AnthropicDialect(api_key=KEY))
make_provider = provider_maker(
    AnthropicProvider, api_key=KEY, model=FAKE_MODEL, context_window=200_000
)


async def test_success_parses_text_usage_and_model_and_sends_the_key_and_version(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    provider = make_provider(fake, client)

    sent = await complete_echo(provider, fake, model=FAKE_MODEL, finish_reason="end_turn")

    assert (sent.method, sent.path) == ("POST", "/v1/messages")
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.headers["content-type"] == "application/json"
    assert "authorization" not in sent.headers
    assert sent.body == {
        "model": FAKE_MODEL,
        "max_tokens": 256,
        "system": SYSTEM,
        "messages": [{"role": "user", "content": USER}],
        "temperature": 0.2,
    }


async def test_system_messages_go_to_the_system_field_and_never_into_messages(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    provider = make_provider(fake, client)
    two_systems = (ChatMessage("system", "Be brief."), ChatMessage("system", "Use French."))

    await provider.complete(make_request(messages=(*two_systems, ChatMessage("user", "Hi"))))
    await provider.complete(make_request(messages=(ChatMessage("user", "Hi"),)))

    with_system, without_system = (request.body for request in fake.requests)
    assert with_system["system"] == "Be brief.\n\nUse French."
    assert with_system["messages"] == [{"role": "user", "content": "Hi"}]
    assert "system" not in without_system


async def test_the_configured_version_and_request_model_are_sent(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    provider = make_provider(fake, client, api_version="2024-01-01")

    completion = await provider.complete(make_request(model="claude-other"))

    [sent] = fake.requests
    assert sent.headers["anthropic-version"] == "2024-01-01"
    assert sent.body["model"] == "claude-other"
    assert completion.model == "claude-other"


async def test_a_temperature_above_anthropics_range_is_capped_not_refused(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    completion = await make_provider(fake, client).complete(make_request(temperature=1.7))

    assert completion.content.startswith("Enhanced: ")
    assert fake.requests[0].body["temperature"] == 1.0


async def test_429_with_retry_after_is_rate_limited_with_that_wait(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    fake.fail_next(1, fault=HttpError(429, retry_after=7))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, RateLimited)
    assert error.retry_after == 7.0
    assert "primary: HTTP 429: fake error 429 (rate_limit_error)" in str(error)


async def test_429_without_retry_after_waits_for_the_exhausted_limit_reset(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    now = datetime.datetime.now(datetime.UTC)
    headers = {
        "anthropic-ratelimit-requests-remaining": "40",
        "anthropic-ratelimit-requests-reset": (now + datetime.timedelta(seconds=50)).isoformat(),
        "anthropic-ratelimit-input-tokens-remaining": "0",
        "anthropic-ratelimit-input-tokens-reset": (
            now + datetime.timedelta(seconds=20)
        ).isoformat(),
    }
    fake.enqueue(FakeReply(status=429, headers=headers))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, RateLimited)
    assert error.retry_after == pytest.approx(20.0, abs=2.0)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"retry-after": "3", "anthropic-ratelimit-tokens-reset": "2025-01-01T00:01:00Z"}, 3.0),
        (
            {
                "anthropic-ratelimit-requests-reset": "2025-01-01T00:00:30Z",
                "anthropic-ratelimit-requests-remaining": "0",
                "anthropic-ratelimit-tokens-reset": "2025-01-01T00:00:45Z",
                "anthropic-ratelimit-tokens-remaining": "0",
            },
            45.0,
        ),
        ({"anthropic-ratelimit-output-tokens-reset": "2025-01-01T00:00:10+00:00"}, 10.0),
        ({"anthropic-ratelimit-tokens-reset": "2024-12-31T23:59:00Z"}, 0.0),
        ({"anthropic-ratelimit-tokens-reset": "soon"}, None),
        ({}, None),
    ],
)
def test_retry_hints_are_read_from_retry_after_then_rfc3339_resets(
    headers: dict[str, str], expected: float | None
) -> None:
    now = datetime.datetime(2025, 1, 1, tzinfo=datetime.UTC).timestamp()

    assert anthropic_retry_after(httpx.Headers(headers), now=now) == expected


@pytest.mark.parametrize(
    ("status", "error_type", "vendor_type"),
    [
        (529, TransientError, "overloaded_error"),
        (500, TransientError, "api_error"),
        (502, TransientError, "api_error"),
        (503, TransientError, "api_error"),
        (504, TransientError, "timeout_error"),
        (400, InvalidRequest, "invalid_request_error"),
        (404, InvalidRequest, "not_found_error"),
        (413, InvalidRequest, "request_too_large"),
        (422, InvalidRequest, "invalid_request_error"),
        (401, AuthenticationFailed, "authentication_error"),
        (403, AuthenticationFailed, "permission_error"),
    ],
)
async def test_status_codes_map_to_domain_errors_with_anthropics_error_type(
    fake: FakeProviderServer,
    client: httpx.AsyncClient,
    status: int,
    error_type: type[Exception],
    vendor_type: str,
) -> None:
    fake.fail_next(1, status=status)

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert type(error) is error_type
    assert str(error) == f"primary: HTTP {status}: fake error {status} ({vendor_type})"


async def test_a_wrong_key_is_refused_by_the_fake_and_never_shown(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    wrong = "sk-ant-api03-wrong0123456789"
    provider = make_provider(fake, client, api_key=wrong)

    error = await failure(provider.complete(make_request()))

    assert isinstance(error, AuthenticationFailed)
    assert str(error) == "primary: HTTP 401: invalid x-api-key (authentication_error)"
    assert_hidden(wrong, repr(provider))


async def test_a_key_echoed_by_the_vendor_is_redacted(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    body = {"type": "error", "error": {"type": "invalid_request_error", "message": f"bad {KEY}"}}
    fake.enqueue(FakeReply(status=400, body=body))
    provider = make_provider(fake, client)

    error = await failure(provider.complete(make_request()))

    assert str(error) == "primary: HTTP 400: bad [redacted] (invalid_request_error)"
    assert_hidden(KEY, repr(provider))


@pytest.mark.parametrize("fault", [MalformedJson(), WrongContentType(), EmptyBody()])
async def test_broken_success_bodies_are_bad_responses(
    fake: FakeProviderServer, client: httpx.AsyncClient, fault: Any
) -> None:
    fake.fail_next(1, fault=fault)

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, BadResponse)
    assert error.retryable


@pytest.mark.parametrize(
    "body",
    [
        {"content": [], "stop_reason": "end_turn"},
        {"content": [{"type": "thinking", "thinking": "hmm"}], "stop_reason": "max_tokens"},
        {"content": [{"type": "tool_use", "id": "t", "name": "x", "input": {}}]},
        {"content": "not a list"},
    ],
)
async def test_answers_without_text_are_bad_responses(
    fake: FakeProviderServer, client: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    fake.enqueue(FakeReply(body=body))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, BadResponse)
    assert "the answer has no text" in str(error)


async def test_a_refusal_is_an_invalid_request_not_worth_retrying(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(FakeReply(body={"content": [], "stop_reason": "refusal"}))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, InvalidRequest)
    assert not error.retryable


async def test_text_blocks_are_joined_and_other_blocks_skipped(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    blocks = [
        {"type": "thinking", "thinking": "first, think"},
        {"type": "text", "text": "Hello, "},
        {"type": "text", "text": "world."},
    ]
    fake.enqueue(FakeReply(body={"content": blocks, "stop_reason": "end_turn"}))

    completion = await make_provider(fake, client).complete(make_request())

    assert completion.content == "Hello, world."
    assert completion.model == FAKE_MODEL
    assert completion.usage == TokenUsage(0, 0)


async def test_check_health_lists_models_and_sends_no_completion(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    await make_provider(fake, client).check_health(timeout=5.0)

    [sent] = fake.requests
    assert (sent.method, sent.path) == ("GET", "/v1/models")
    assert sent.headers["x-api-key"] == KEY
    assert sent.headers["anthropic-version"] == "2023-06-01"


@pytest.mark.parametrize(
    ("reply", "error_type"),
    [
        (FakeReply(status=529), TransientError),
        (FakeReply(status=401), AuthenticationFailed),
        (FakeReply(fault=WrongContentType()), BadResponse),
    ],
)
async def test_an_unhealthy_api_fails_the_check_with_a_domain_error(
    fake: FakeProviderServer, client: httpx.AsyncClient, reply: FakeReply, error_type: type
) -> None:
    fake.enqueue(reply)

    error = await failure(make_provider(fake, client).check_health(timeout=5.0))

    assert type(error) is error_type
    assert [r.path for r in fake.requests] == ["/v1/models"]


def test_repr_shows_name_model_and_url_but_never_the_key(client: httpx.AsyncClient) -> None:
    provider = AnthropicProvider(
        name="claude",
        base_url="https://user:pw@api.anthropic.com/",
        api_key=KEY,
        model="claude-sonnet-4-0",
        context_window=200_000,
        http_client=client,
    )

    assert repr(provider) == (
        "<AnthropicProvider name='claude' model='claude-sonnet-4-0' "
        "base_url='https://***@api.anthropic.com'>"
    )
    assert (provider.kind, provider.context_window) == ("anthropic", 200_000)
