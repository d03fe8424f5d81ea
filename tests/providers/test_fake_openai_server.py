from __future__ import annotations

import asyncio
import contextlib
import io
import math
import re
import statistics
import time

import httpx
import pytest

from aiproc.server.fakes.engine import FakeProviderServer
from aiproc.server.fakes.openai_server import (
    FakeOpenAIServer,
    FakeReply,
    OpenAIDialect,
    run_fake_provider,
)

CHAT = {"model": "m", "messages": [{"role": "user", "content": "x" * 300}]}


async def test_answers_a_valid_chat_completion(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    response = await client.post(f"{fake.base_url}/chat/completions", json=CHAT)

    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "m"
    assert body["id"].startswith("chatcmpl-")
    assert body["choices"][0]["message"] == {
        "role": "assistant",
        "content": "Enhanced: " + "x" * 200,
    }
    assert body["choices"][0]["finish_reason"] == "stop"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0


async def test_lists_a_model(fake: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    response = await client.get(f"{fake.base_url}/models")

    assert response.status_code == 200
    assert [m["id"] for m in response.json()["data"]] == ["fake-gpt"]
    assert fake.requests[0].path == "/v1/models"


async def test_rejects_a_malformed_request_like_a_real_server(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    response = await client.post(f"{fake.base_url}/chat/completions", json={"messages": []})

    assert response.status_code == 400
    assert "model" in response.json()["error"]["message"]


async def test_scripted_replies_are_used_once_each_then_success(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.fail_next(2, status=503)
    fake.enqueue(FakeReply(status=429, headers={"Retry-After": "1"}))
    url = f"{fake.base_url}/chat/completions"

    statuses = [(await client.post(url, json=CHAT)).status_code for _ in range(4)]

    assert statuses == [503, 503, 429, 200]


async def test_latency_can_change_while_serving(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.latency = 0.15
    started = time.monotonic()
    await client.post(f"{fake.base_url}/chat/completions", json=CHAT)

    # asyncio may fire a timer up to its clock resolution early.
    assert time.monotonic() - started >= 0.15 - 0.005


def spread_fake(latency: float, sigma: float, seed: int = 7) -> FakeProviderServer:
    return FakeProviderServer(OpenAIDialect(), latency=latency, latency_sigma=sigma, seed=seed)


def test_latency_sigma_draws_lognormally_around_the_latency_as_median() -> None:
    fake = spread_fake(1.5, 0.5)
    draws = [fake.draw_latency() for _ in range(4000)]

    assert statistics.median(draws) == pytest.approx(1.5, rel=0.05)
    assert statistics.stdev(math.log(d) for d in draws) == pytest.approx(0.5, rel=0.05)
    assert min(draws) > 0


def test_latency_draws_replay_with_the_same_seed_and_are_fixed_without_sigma() -> None:
    first, again, other = spread_fake(1.0, 0.5), spread_fake(1.0, 0.5), spread_fake(1.0, 0.5, 8)

    draws = [first.draw_latency() for _ in range(5)]

    assert draws == [again.draw_latency() for _ in range(5)]
    assert draws != [other.draw_latency() for _ in range(5)]
    assert {spread_fake(0.25, 0.0).draw_latency() for _ in range(5)} == {0.25}


def test_a_negative_latency_sigma_is_refused() -> None:
    with pytest.raises(ValueError, match="latency_sigma"):
        spread_fake(1.0, -0.1)


async def test_each_request_waits_its_drawn_latency(client: httpx.AsyncClient) -> None:
    # Seed 2 draws ~0.18 s first around a 0.02 s median: the wait tells the two apart.
    expected = spread_fake(0.02, 1.0, seed=2).draw_latency()
    assert expected > 0.1
    async with spread_fake(0.02, 1.0, seed=2) as fake:
        started = time.monotonic()
        response = await client.post(f"{fake.base_url}/chat/completions", json=CHAT)
        took = time.monotonic() - started

    assert response.status_code == 200
    assert took >= expected - 0.005


async def test_wait_for_requests_returns_when_enough_arrived(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(FakeReply(hang=True), FakeReply(hang=True))
    url = f"{fake.base_url}/chat/completions"
    calls = [asyncio.create_task(client.post(url, json=CHAT)) for _ in range(2)]

    await fake.wait_for_requests(2)

    assert fake.request_count == 2
    assert all(r.arrived_at <= time.monotonic() for r in fake.requests)
    for call in calls:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)


async def test_wait_for_requests_times_out(fake: FakeOpenAIServer) -> None:
    with pytest.raises(TimeoutError):
        await fake.wait_for_requests(1, timeout=0.05)


async def test_stopping_releases_hanging_requests(client: httpx.AsyncClient) -> None:
    async with FakeOpenAIServer() as fake:
        fake.enqueue(FakeReply(hang=True))
        call = asyncio.create_task(client.post(f"{fake.base_url}/chat/completions", json=CHAT))
        await fake.wait_for_requests(1)

    with pytest.raises(httpx.TransportError):
        await call


async def test_without_recording_only_the_count_is_kept(client: httpx.AsyncClient) -> None:
    async with FakeOpenAIServer(record=False) as fake:
        await client.post(f"{fake.base_url}/chat/completions", json=CHAT)

    assert (fake.request_count, fake.requests) == (1, [])


class Announcements(io.StringIO):
    """Captured stdout that tells the test when something was written."""

    def __init__(self) -> None:
        super().__init__()
        self.written = asyncio.Event()

    def write(self, text: str) -> int:
        self.written.set()
        return super().write(text)


async def test_run_fake_provider_announces_its_url_and_serves_until_cancelled(
    client: httpx.AsyncClient,
) -> None:
    out = Announcements()
    with contextlib.redirect_stdout(out):
        server = asyncio.create_task(run_fake_provider("127.0.0.1", 0, 0.0))
        try:
            async with asyncio.timeout(5):
                await out.written.wait()
            line = out.getvalue()
            match = re.fullmatch(
                r"fake OpenAI-compatible server on (http://127\.0\.0\.1:\d+/v1)\n", line
            )
            assert match is not None, line
            response = await client.get(f"{match.group(1)}/models")
            assert response.status_code == 200
        finally:
            server.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await server
    assert server.cancelled()


async def test_stops_and_starts_again_on_the_same_port(client: httpx.AsyncClient) -> None:
    async with FakeOpenAIServer() as fake:
        url = fake.base_url
    with pytest.raises(httpx.TransportError):
        await client.get(f"{url}/models")

    await fake.start()
    try:
        assert fake.base_url == url
        assert (await client.get(f"{url}/models")).status_code == 200
    finally:
        await fake.aclose()
