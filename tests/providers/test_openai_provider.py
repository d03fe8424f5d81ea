from __future__ import annotations

import email.utils
import gzip
import json
import zlib
from typing import Any

import httpx
import pytest

from aiproc.server.core.errors import (
    AuthenticationFailed,
    BadResponse,
    InvalidRequest,
    ProviderTimeout,
    RateLimited,
    TransientError,
)
from aiproc.server.core.models import TokenUsage
from aiproc.server.fakes.openai_server import FakeOpenAIServer, FakeReply
from aiproc.server.providers._http_errors import retry_after_seconds
from aiproc.server.providers.openai import OpenAIProvider
from tests.providers.vendor_support import (
    MESSAGES,
    assert_hidden,
    complete_echo,
    failure,
    make_request,
    provider_maker,
)

KEY = "sk-test-0123456789abcdefSECRET"

make_provider = provider_maker(OpenAIProvider, api_key=KEY, model="gpt-test", context_window=8192)


async def test_success_parses_content_model_usage_and_sends_the_key(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    provider = make_provider(fake, client)

    sent = await complete_echo(provider, fake, model="gpt-test", finish_reason="stop")

    assert (sent.method, sent.path) == ("POST", "/v1/chat/completions")
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    assert sent.headers["content-type"] == "application/json"
    assert sent.headers["user-agent"].startswith("aiproc/")
    assert sent.body == {
        "model": "gpt-test",
        "messages": [{"role": m.role, "content": m.content} for m in MESSAGES],
        "max_tokens": 256,
        "temperature": 0.2,
    }


async def test_without_a_key_no_authorization_header_is_sent(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    provider = make_provider(fake, client, api_key=None, base_url=fake.base_url + "/")

    await provider.complete(make_request())

    [sent] = fake.requests
    assert "authorization" not in sent.headers
    assert sent.path == "/v1/chat/completions"


async def test_the_request_model_overrides_the_provider_model(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    completion = await make_provider(fake, client).complete(make_request(model="gpt-other"))

    assert fake.requests[0].body["model"] == "gpt-other"
    assert completion.model == "gpt-other"


async def test_missing_usage_counts_as_zero(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(FakeReply(body={"choices": [{"message": {"content": "ok"}}]}))

    completion = await make_provider(fake, client).complete(make_request())

    assert completion.content == "ok"
    assert completion.usage == TokenUsage(0, 0)
    assert completion.model == "gpt-test"
    assert completion.finish_reason == ""


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "Retry-After": "2"}, 1.5),
        ({"x-ratelimit-reset-requests": "6m0s"}, 360.0),
        ({"x-ratelimit-reset-tokens": "20ms"}, 0.02),
        ({"x-ratelimit-reset-requests": "1h2m3.5s"}, 3723.5),
        (
            {
                "x-ratelimit-reset-requests": "6m0s",
                "x-ratelimit-reset-tokens": "1s",
                "x-ratelimit-remaining-requests": "12",
                "x-ratelimit-remaining-tokens": "0",
            },
            1.0,
        ),
        ({"x-ratelimit-reset-requests": "2s", "x-ratelimit-reset-tokens": "1s"}, 2.0),
        ({}, None),
        ({"Retry-After": "soon"}, None),
    ],
)
async def test_429_is_rate_limited_with_the_hinted_wait(
    fake: FakeOpenAIServer,
    client: httpx.AsyncClient,
    headers: dict[str, str],
    expected: float | None,
) -> None:
    fake.enqueue(FakeReply(status=429, headers=headers))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, RateLimited)
    assert error.retryable
    assert error.retry_after == pytest.approx(expected)
    assert "primary: HTTP 429" in str(error)


def test_retry_after_as_an_http_date_is_measured_from_now() -> None:
    when = 1_445_412_480.0
    headers = httpx.Headers({"Retry-After": email.utils.formatdate(when, usegmt=True)})

    assert retry_after_seconds(headers, now=when - 30) == pytest.approx(30.0)
    assert retry_after_seconds(headers, now=when + 30) == 0.0


async def test_503_with_retry_after_is_rate_limited_and_without_is_transient(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(FakeReply(status=503, headers={"Retry-After": "3"}), FakeReply(status=503))
    provider = make_provider(fake, client)

    limited = await failure(provider.complete(make_request()))
    transient = await failure(provider.complete(make_request()))

    assert isinstance(limited, RateLimited)
    assert limited.retry_after == 3.0
    assert type(transient) is TransientError
    assert transient.retryable


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (500, TransientError),
        (502, TransientError),
        (504, TransientError),
        (507, TransientError),
        (408, TransientError),
        (401, AuthenticationFailed),
        (403, AuthenticationFailed),
        (400, InvalidRequest),
        (404, InvalidRequest),
        (422, InvalidRequest),
        (418, InvalidRequest),
        (302, BadResponse),
    ],
)
async def test_status_codes_map_to_domain_errors(
    fake: FakeOpenAIServer, client: httpx.AsyncClient, status: int, error_type: type[Exception]
) -> None:
    fake.fail_next(1, status=status)

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert type(error) is error_type
    assert f"primary: HTTP {status}: fake error {status}" in str(error)


async def test_error_messages_are_short_and_never_show_the_key(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    vendor_message = (
        f"Incorrect API key provided: {KEY}.\nHeader was Authorization: Bearer {KEY}. "
        + "You can find your API key at https://platform.openai.com/account/api-keys. " * 20
    )
    body = {"error": {"message": vendor_message, "type": "invalid_request_error", "code": "x"}}
    fake.enqueue(FakeReply(status=400, body=body))

    error = await failure(make_provider(fake, client).complete(make_request()))

    message = str(error)
    assert isinstance(error, InvalidRequest)
    assert message.startswith("primary: HTTP 400: Incorrect API key provided: [redacted]")
    assert_hidden(KEY, message)
    assert "\n" not in message
    assert message.endswith("…")
    assert len(message) <= len("primary: HTTP 400: ") + 201


async def test_a_key_not_shaped_like_openai_keys_is_redacted_too(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(FakeReply(status=401, body={"error": {"message": "bad key local-key-42"}}))
    provider = make_provider(fake, client, api_key="local-key-42")

    error = await failure(provider.complete(make_request()))

    assert isinstance(error, AuthenticationFailed)
    assert str(error) == "primary: HTTP 401: bad key [redacted]"


async def test_a_non_json_error_page_is_excerpted(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    page = "<html><body><h1>502 Bad Gateway</h1>" + "<p>nginx</p>" * 100 + "</body></html>"
    fake.enqueue(FakeReply(status=502, body=page, headers={"Content-Type": "text/html"}))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, TransientError)
    assert "<h1>502 Bad Gateway</h1>" in str(error)
    assert len(str(error)) < 250


@pytest.mark.parametrize(
    "body",
    [
        "{not json",
        "[1, 2]",
        {"choices": []},
        {"choices": [{"message": {"content": None}, "finish_reason": "tool_calls"}]},
        {"choices": [{"message": {"content": ""}, "finish_reason": "length"}]},
        {"choices": [{"text": "completion-style"}]},
        {"error": {"message": "upstream failed"}},
    ],
)
async def test_unusable_answers_are_bad_responses(
    fake: FakeOpenAIServer, client: httpx.AsyncClient, body: str | dict[str, Any]
) -> None:
    fake.enqueue(FakeReply(body=body))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, BadResponse)
    assert error.retryable


async def test_an_oversized_body_is_a_bad_response(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(FakeReply(body=b'{"choices": "' + b"x" * (9 * 1024 * 1024) + b'"}'))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, BadResponse)
    assert "larger than" in str(error)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_answer_is_decoded(
    fake: FakeOpenAIServer, client: httpx.AsyncClient, encoding: str
) -> None:
    answer = {
        "model": "gpt-test",
        "choices": [{"message": {"content": "Squeezed."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 2},
    }
    raw = json.dumps(answer).encode()
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    fake.enqueue(FakeReply(body=body, headers={"Content-Encoding": encoding}))

    completion = await make_provider(fake, client).complete(make_request())

    assert completion.content == "Squeezed."
    assert completion.usage == TokenUsage(7, 2)


async def test_an_answer_that_does_not_decode_is_a_bad_response(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(FakeReply(body=b"not gzip at all", headers={"Content-Encoding": "gzip"}))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, BadResponse)
    assert "unreadable answer" in str(error)


async def test_a_dropped_connection_is_transient(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(FakeReply(drop_connection=True))
    provider = make_provider(fake, client)

    error = await failure(provider.complete(make_request()))

    assert type(error) is TransientError
    assert error.retryable
    assert fake.request_count == 1
    # The pool recovers: the next call succeeds.
    assert (await provider.complete(make_request())).content.startswith("Enhanced: ")


async def test_a_hanging_server_is_a_timeout(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(FakeReply(hang=True))

    error = await failure(make_provider(fake, client).complete(make_request(timeout=0.2)))

    assert isinstance(error, ProviderTimeout)
    assert "0.2s" in str(error)


async def test_request_timeout_caps_the_call_timeout(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(FakeReply(hang=True))
    provider = make_provider(fake, client, request_timeout=0.1)

    error = await failure(provider.complete(make_request(timeout=30.0)))

    assert isinstance(error, ProviderTimeout)
    assert "0.1s" in str(error)


async def test_a_refused_connection_is_transient(client: httpx.AsyncClient) -> None:
    async with FakeOpenAIServer() as fake:
        provider = make_provider(fake, client)
    # The fake has stopped: its port now refuses connections.

    error = await failure(provider.complete(make_request()))

    assert type(error) is TransientError
    assert "network error" in str(error)


async def test_aclose_leaves_the_shared_client_open(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    await make_provider(fake, client).aclose()

    completion = await make_provider(fake, client, name="other").complete(make_request())

    assert completion.content.startswith("Enhanced: ")


def test_repr_shows_name_model_and_url_but_never_the_key(client: httpx.AsyncClient) -> None:
    provider = OpenAIProvider(
        name="primary",
        base_url="https://user:password@api.example.com/v1",
        api_key=KEY,
        model="gpt-4o",
        context_window=128_000,
        http_client=client,
    )

    text = repr(provider)

    assert text == (
        "<OpenAIProvider name='primary' model='gpt-4o' base_url='https://***@api.example.com/v1'>"
    )
    assert (provider.kind, provider.context_window) == ("openai", 128_000)


async def test_check_health_lists_models_and_sends_no_completion(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    await make_provider(fake, client).check_health(timeout=5.0)

    [sent] = fake.requests
    assert (sent.method, sent.path) == ("GET", "/v1/models")
    assert sent.headers["authorization"] == f"Bearer {KEY}"


@pytest.mark.parametrize(
    ("reply", "error_type"),
    [
        (FakeReply(status=401), AuthenticationFailed),
        (FakeReply(status=503), TransientError),
        (FakeReply(status=429, headers={"Retry-After": "2"}), RateLimited),
        (FakeReply(body="<html>login</html>", headers={"Content-Type": "text/html"}), BadResponse),
    ],
)
async def test_an_unhealthy_endpoint_fails_the_check_with_a_domain_error(
    fake: FakeOpenAIServer, client: httpx.AsyncClient, reply: FakeReply, error_type: type
) -> None:
    fake.enqueue(reply)

    error = await failure(make_provider(fake, client).check_health(timeout=5.0))

    assert type(error) is error_type
    assert [r.method for r in fake.requests] == ["GET"]


async def test_a_health_check_that_hangs_times_out(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(FakeReply(hang=True))

    with pytest.raises(ProviderTimeout, match=r"0\.1s"):
        await make_provider(fake, client).check_health(timeout=0.1)


async def test_a_content_filtered_answer_is_an_invalid_request(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    choice = {"message": {"content": None}, "finish_reason": "content_filter"}
    fake.enqueue(FakeReply(body={"choices": [choice]}))

    error = await failure(make_provider(fake, client).complete(make_request()))

    assert isinstance(error, InvalidRequest)
    assert not error.retryable
