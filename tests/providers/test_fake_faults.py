"""Each fault of the fake provider, as a real HTTP client on a real socket sees it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest

from aiproc.server.fakes import (
    EmptyBody,
    FakeOpenAIServer,
    FakeReply,
    Fault,
    Hang,
    HttpError,
    MalformedJson,
    Refuse,
    Reset,
    SlowBody,
    WrongContentType,
    parse_fault,
)
from aiproc.server.providers.http import create_http_client

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hello there"}]}


def completions(fake: FakeOpenAIServer) -> str:
    return f"{fake.base_url}/chat/completions"


@pytest.fixture
async def impatient_client() -> AsyncIterator[httpx.AsyncClient]:
    http_client = create_http_client(max_connections=2, timeout=0.2)
    yield http_client
    await http_client.aclose()


@pytest.mark.parametrize("status", [500, 502, 503, 504, 529])
async def test_an_error_status_comes_with_the_dialects_error_body(
    fake: FakeOpenAIServer, client: httpx.AsyncClient, status: int
) -> None:
    fake.enqueue(FakeReply(fault=HttpError(status)))

    response = await client.post(completions(fake), json=CHAT)

    assert response.status_code == status
    assert response.json()["error"]["message"] == f"fake error {status}"
    assert "retry-after" not in response.headers


@pytest.mark.parametrize(
    ("fault", "header", "value"),
    [
        (HttpError(429, retry_after=2), "Retry-After", "2"),
        (HttpError(429, retry_after=0.5), "Retry-After", "0.5"),
        (HttpError(429, retry_after_ms=300), "retry-after-ms", "300"),
    ],
)
async def test_a_429_carries_its_retry_hint(
    fake: FakeOpenAIServer, client: httpx.AsyncClient, fault: HttpError, header: str, value: str
) -> None:
    fake.enqueue(FakeReply(fault=fault))

    response = await client.post(completions(fake), json=CHAT)

    assert response.status_code == 429
    assert response.headers[header] == value
    assert response.json()["error"]["type"] == "rate_limit_exceeded"


async def test_a_reset_fails_the_call_without_an_answer(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.fail_next(1, fault=Reset())

    with pytest.raises(httpx.TransportError):
        await client.post(completions(fake), json=CHAT)

    assert (await client.post(completions(fake), json=CHAT)).status_code == 200
    assert fake.stats().outcomes == {"reset": 1, "200": 1}


async def test_a_hang_outlasts_the_clients_timeout(
    fake: FakeOpenAIServer, impatient_client: httpx.AsyncClient
) -> None:
    fake.enqueue(FakeReply(fault=Hang()))

    with pytest.raises(httpx.ReadTimeout):
        await impatient_client.post(completions(fake), json=CHAT)

    assert fake.request_count == 1


async def test_a_slow_body_arrives_whole_a_chunk_at_a_time(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fault = SlowBody(chunk=64, delay=0.01)
    fake.enqueue(FakeReply(fault=fault))

    async with client.stream("POST", completions(fake), json=CHAT) as response:
        assert response.status_code == 200
        chunks = [chunk async for chunk in response.aiter_raw()]
    data = b"".join(chunks)

    # The headers come first and the body trickles after them: the client
    # reads it in several pieces, not one.
    assert len(chunks) > 1
    assert int(response.headers["content-length"]) == len(data)
    body = json.loads(data)
    assert body["choices"][0]["message"]["content"] == "Enhanced: hello there"
    assert -(-len(data) // fault.chunk) > 3  # it was written in more than three pieces


async def test_malformed_json_is_a_200_that_does_not_parse(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(FakeReply(fault=MalformedJson()))

    response = await client.post(completions(fake), json=CHAT)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content.startswith(b'{"id": "chatcmpl-fake-')
    with pytest.raises(json.JSONDecodeError):
        response.json()


async def test_the_wrong_content_type_is_a_200_html_page(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(FakeReply(fault=WrongContentType()))

    response = await client.post(completions(fake), json=CHAT)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.text.startswith("<!DOCTYPE html>")


async def test_an_empty_200_has_no_body(fake: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    fake.enqueue(FakeReply(fault=EmptyBody()))

    response = await client.post(completions(fake), json=CHAT)

    assert (response.status_code, response.content) == (200, b"")
    assert response.headers["content-type"] == "application/json"


async def test_faults_hit_any_endpoint(fake: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    fake.enqueue(FakeReply(fault=HttpError(503)))

    assert (await client.get(f"{fake.base_url}/models")).status_code == 503


def test_refusing_is_not_a_reply_but_a_phase() -> None:
    with pytest.raises(ValueError, match="phase"):
        FakeReply(fault=Refuse())


def test_a_reply_is_one_thing_at_a_time() -> None:
    with pytest.raises(ValueError, match="one of"):
        FakeReply(status=503, fault=Reset())


@pytest.mark.parametrize(
    ("spec", "fault"),
    [
        ("503", HttpError(503)),
        ("429:retry-after=2", HttpError(429, retry_after=2)),
        ("429:retry-after-ms=300", HttpError(429, retry_after_ms=300)),
        ("reset", Reset()),
        ("refuse", Refuse()),
        ("hang", Hang()),
        ("slow:chunk=8,delay=0.05", SlowBody(chunk=8, delay=0.05)),
        ("malformed", MalformedJson()),
        ("html", WrongContentType()),
        ("empty", EmptyBody()),
    ],
)
def test_fault_specs_read_and_write_alike(spec: str, fault: Fault) -> None:
    assert parse_fault(spec) == fault
    assert fault.spec == spec


def test_slow_with_no_options_takes_the_defaults() -> None:
    assert parse_fault("slow") == SlowBody()


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("teapot", "unknown fault"),
        ("200", "400-599"),
        ("429:retry-after=soon", "not a number"),
        ("reset:hard=1", "unknown option"),
        ("slow:chunk=1.5", "whole number"),
        ("503:retry-after", "key=value"),
    ],
)
def test_bad_fault_specs_say_what_is_wrong(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_fault(spec)
