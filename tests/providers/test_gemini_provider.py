from __future__ import annotations

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
from aiproc.server.fakes.engine import FakeProviderServer
from aiproc.server.fakes.faults import FakeReply, HttpError, MalformedJson, WrongContentType
from aiproc.server.fakes.gemini_dialect import FAKE_MODEL, GeminiDialect, retry_info
from aiproc.server.providers.base import ChatMessage
from aiproc.server.providers.gemini import GeminiProvider
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

KEY = "AIzaSyTest0123456789abcdefghijSECRET"
GENERATE_PATH = f"/v1beta/models/{FAKE_MODEL}:generateContent"

fake = fake_fixture(lambda: GeminiDialect(api_key=KEY))
make_provider = provider_maker(
    GeminiProvider, api_key=KEY, model=FAKE_MODEL, context_window=1_048_576
)


def quota_error(*details: dict[str, Any]) -> dict[str, Any]:
    """Gemini's 429 body, with google.rpc details."""
    error = {"code": 429, "message": "You exceeded your current quota.", "details": list(details)}
    return {"error": {**error, "status": "RESOURCE_EXHAUSTED"}}


async def test_success_sends_the_key_in_a_header_and_parses_text_usage_and_version(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    provider = make_provider(fake, client)

    sent = await complete_echo(provider, fake, model=FAKE_MODEL, finish_reason="STOP")

    assert (sent.method, sent.path) == ("POST", GENERATE_PATH)
    assert sent.headers["x-goog-api-key"] == KEY
    # Never in the URL, where access logs would keep it.
    assert sent.query == {}
    assert sent.body == {
        "systemInstruction": {"parts": [{"text": SYSTEM}]},
        "contents": [{"role": "user", "parts": [{"text": USER}]}],
        "generationConfig": {"maxOutputTokens": 256, "temperature": 0.2},
    }


async def test_roles_map_to_gemini_and_without_system_there_is_no_instruction(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    messages = (
        ChatMessage("user", "Hi"),
        ChatMessage("assistant", "Hello"),
        ChatMessage("user", "Summarise"),
    )

    await make_provider(fake, client).complete(make_request(messages=messages))

    body = fake.requests[0].body
    assert "systemInstruction" not in body
    assert [c["role"] for c in body["contents"]] == ["user", "model", "user"]


async def test_a_models_prefix_in_the_name_is_not_doubled(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    await make_provider(fake, client, model=f"models/{FAKE_MODEL}").complete(make_request())

    assert fake.requests[0].path == GENERATE_PATH


async def test_retry_info_in_the_error_body_is_the_wait(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    help_link = {"@type": "type.googleapis.com/google.rpc.Help", "links": []}
    fake.enqueue(FakeReply(status=429, body=quota_error(help_link, retry_info(38.512))))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, RateLimited)
    assert error.retry_after == pytest.approx(38.512)
    assert "(RESOURCE_EXHAUSTED)" in str(error)


async def test_a_retry_after_header_wins_and_no_hint_is_none(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(
        FakeReply(status=429, headers={"Retry-After": "5"}, body=quota_error(retry_info(40))),
        FakeReply(status=429, body=quota_error()),
    )
    provider = make_provider(fake, client)

    with_header = await failure(provider.complete(make_request()))
    without_hint = await failure(provider.complete(make_request()))

    assert isinstance(with_header, RateLimited)
    assert with_header.retry_after == 5.0
    assert isinstance(without_hint, RateLimited)
    assert without_hint.retry_after is None


@pytest.mark.parametrize(
    ("status", "error_type", "status_name"),
    [
        (500, TransientError, "INTERNAL"),
        (503, TransientError, "UNAVAILABLE"),
        (504, TransientError, "DEADLINE_EXCEEDED"),
        (400, InvalidRequest, "INVALID_ARGUMENT"),
        (404, InvalidRequest, "NOT_FOUND"),
        (403, AuthenticationFailed, "PERMISSION_DENIED"),
    ],
)
async def test_status_codes_map_to_domain_errors_with_googles_status_name(
    fake: FakeProviderServer,
    client: httpx.AsyncClient,
    status: int,
    error_type: type[Exception],
    status_name: str,
) -> None:
    fake.fail_next(1, status=status)

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert type(error) is error_type
    assert str(error) == f"primary: HTTP {status}: fake error {status} ({status_name})"


async def test_a_wrong_key_is_an_authentication_failure_though_google_says_400(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    wrong = "AIzaSyWrong0123456789abcdefghijklm"
    provider = make_provider(fake, client, api_key=wrong)

    error = await failure(provider.complete(make_request()))

    assert isinstance(error, AuthenticationFailed)
    assert str(error) == (
        "primary: HTTP 400: API key not valid. Please pass a valid API key. (INVALID_ARGUMENT)"
    )
    assert_hidden(wrong, repr(provider))


async def test_no_key_at_all_is_refused_with_permission_denied(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    error = await failure(make_provider(fake, client, api_key="").complete(make_request()))

    assert isinstance(error, AuthenticationFailed)
    assert "(PERMISSION_DENIED)" in str(error)


async def test_a_key_echoed_by_google_is_redacted(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    body = {"error": {"code": 400, "message": f"key {KEY} is bad", "status": "INVALID_ARGUMENT"}}
    fake.enqueue(FakeReply(status=400, body=body))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert str(error) == "primary: HTTP 400: key [redacted] is bad (INVALID_ARGUMENT)"


async def test_a_blocked_prompt_is_an_invalid_request_naming_the_reason(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    body = {
        "promptFeedback": {"blockReason": "PROHIBITED_CONTENT"},
        "usageMetadata": {"promptTokenCount": 12, "totalTokenCount": 12},
        "modelVersion": FAKE_MODEL,
    }
    fake.enqueue(FakeReply(body=body))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, InvalidRequest)
    assert str(error) == "primary: the prompt was blocked (PROHIBITED_CONTENT)"


def candidate(parts: list[dict[str, Any]] | None, finish_reason: str) -> dict[str, Any]:
    content = {"content": {"parts": parts}} if parts is not None else {}
    return {"candidates": [{**content, "finishReason": finish_reason}]}


@pytest.mark.parametrize(
    ("body", "error_type"),
    [
        ({"candidates": []}, InvalidRequest),
        ({"candidates": "nope"}, InvalidRequest),
        (candidate(None, "SAFETY"), InvalidRequest),
        (candidate([], "RECITATION"), InvalidRequest),
        (candidate([{"text": ""}], "MAX_TOKENS"), BadResponse),
        (candidate([{"text": "notes", "thought": True}], "STOP"), BadResponse),
    ],
)
async def test_answers_without_text_are_classified_by_why(
    fake: FakeProviderServer,
    client: httpx.AsyncClient,
    body: dict[str, Any],
    error_type: type[Exception],
) -> None:
    fake.enqueue(FakeReply(body=body))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert type(error) is error_type


async def test_parts_are_joined_thoughts_skipped_and_thinking_tokens_counted_as_output(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    parts = [{"text": "planning…", "thought": True}, {"text": "Hello, "}, {"text": "world."}]
    body = {
        "candidates": [{"content": {"parts": parts, "role": "model"}, "finishReason": "STOP"}],
        "usageMetadata": {
            "promptTokenCount": 10,
            "candidatesTokenCount": 4,
            "thoughtsTokenCount": 30,
        },
        "modelVersion": "gemini-2.5-flash-001",
    }
    fake.enqueue(FakeReply(body=body))

    completion = await make_provider(fake, client).complete(make_request())

    assert completion.content == "Hello, world."
    assert completion.model == "gemini-2.5-flash-001"
    assert completion.usage == TokenUsage(10, 34)


@pytest.mark.parametrize("fault", [MalformedJson(), WrongContentType()])
async def test_broken_bodies_are_bad_responses(
    fake: FakeProviderServer, client: httpx.AsyncClient, fault: Any
) -> None:
    fake.fail_next(1, fault=fault)

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, BadResponse)


async def test_check_health_lists_models_and_generates_nothing(
    fake: FakeProviderServer, client: httpx.AsyncClient
) -> None:
    await make_provider(fake, client).check_health(timeout=5.0)

    [sent] = fake.requests
    assert (sent.method, sent.path, sent.query) == ("GET", "/v1beta/models", {})
    assert sent.headers["x-goog-api-key"] == KEY


@pytest.mark.parametrize(
    ("reply", "error_type"),
    [
        (FakeReply(fault=HttpError(503)), TransientError),
        (FakeReply(status=403), AuthenticationFailed),
        (FakeReply(fault=WrongContentType()), BadResponse),
    ],
)
async def test_an_unhealthy_api_fails_the_check(
    fake: FakeProviderServer, client: httpx.AsyncClient, reply: FakeReply, error_type: type
) -> None:
    fake.enqueue(reply)

    error = await failure(make_provider(fake, client).check_health(timeout=5.0))

    assert type(error) is error_type
    assert [r.path for r in fake.requests] == ["/v1beta/models"]


def test_repr_shows_name_model_and_url_but_never_the_key(client: httpx.AsyncClient) -> None:
    provider = GeminiProvider(
        name="gemini",
        base_url="https://generativelanguage.googleapis.com/v1beta",
        api_key=KEY,
        model="gemini-2.0-flash",
        context_window=1_048_576,
        http_client=client,
    )

    assert repr(provider) == (
        "<GeminiProvider name='gemini' model='gemini-2.0-flash' "
        "base_url='https://generativelanguage.googleapis.com/v1beta'>"
    )
    assert provider.kind == "gemini"
