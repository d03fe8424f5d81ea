"""The fake provider's /_fake/ control API, driven over HTTP as another process would."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from aiproc.server.fakes import FakeOpenAIServer, HttpError, Phase

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


async def control(
    fake: FakeOpenAIServer, client: httpx.AsyncClient, path: str, body: Any = None
) -> httpx.Response:
    url = f"{fake.control_url}/{path}"
    if path == "stats":
        return await client.get(url)
    return await client.post(url, json=body)


async def statuses(fake: FakeOpenAIServer, client: httpx.AsyncClient, n: int) -> list[int]:
    url = f"{fake.base_url}/chat/completions"
    return [(await client.post(url, json=CHAT)).status_code for _ in range(n)]


async def test_a_phase_set_over_http_plays_and_shows_in_the_stats(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    answer = await control(fake, client, "phase", {"fault": "503", "requests": 2})
    assert answer.status_code == 200
    assert answer.json()["phase"] == {
        "fault": "503",
        "requests": 2,
        "duration": None,
        "failure_rate": 1.0,
        "seed": 0,
    }

    assert await statuses(fake, client, 3) == [503, 503, 200]

    stats = (await control(fake, client, "stats")).json()
    assert stats == {
        "requests": 3,
        "outcomes": {"503": 2, "200": 1},
        "phase": None,
        "phase_requests": 0,
        "phases_queued": 0,
        "replies_queued": 0,
        "listening": True,
        "latency": 0.0,
    }


async def test_a_schedule_over_http_queues_its_phases(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    schedule = {
        "phases": [
            {"fault": "429:retry-after=2", "requests": 1},
            {"fault": "reset", "requests": 1},
            {"fault": None, "duration": 60},
        ]
    }
    stats = (await control(fake, client, "phase", schedule)).json()
    assert (stats["phase"]["fault"], stats["phases_queued"]) == ("429:retry-after=2", 2)

    first = await client.post(f"{fake.base_url}/chat/completions", json=CHAT)
    assert (first.status_code, first.headers["retry-after"]) == (429, "2")
    with pytest.raises(httpx.TransportError):
        await client.post(f"{fake.base_url}/chat/completions", json=CHAT)
    assert await statuses(fake, client, 1) == [200]
    assert fake.phase == Phase(duration=60)


async def test_the_control_api_is_neither_counted_nor_faulted(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.set_phase(Phase(HttpError(500)))

    assert (await control(fake, client, "stats")).status_code == 200
    assert (await control(fake, client, "reset")).status_code == 200

    assert (fake.request_count, fake.requests, fake.phase) == (0, [], None)


async def test_replies_over_http_go_ahead_of_the_phase(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.set_phase(Phase(HttpError(500), requests=1))

    stats = (await control(fake, client, "replies", {"faults": ["502", "504"]})).json()

    assert stats["replies_queued"] == 2
    assert await statuses(fake, client, 4) == [502, 504, 500, 200]


async def test_latency_over_http(fake: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    stats = (await control(fake, client, "latency", {"seconds": 0.25})).json()

    assert stats["latency"] == fake.latency == 0.25


async def test_reset_over_http_clears_everything(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.set_phase(Phase(HttpError(503)))
    fake.fail_next(3)
    await statuses(fake, client, 2)

    stats = (await control(fake, client, "reset")).json()

    assert (stats["requests"], stats["outcomes"], stats["phase"]) == (0, {}, None)
    assert stats["replies_queued"] == 0
    assert await statuses(fake, client, 1) == [200]


@pytest.mark.parametrize(
    ("path", "body", "problem"),
    [
        ("phase", {"fault": "refuse"}, "needs a duration"),
        ("phase", {"fault": "503", "when": "now"}, "unknown phase key"),
        ("phase", {"fault": "teapot"}, "unknown fault"),
        ("phase", {"fault": 503}, "fault spec"),
        ("phase", {"fault": "503", "requests": 1.5}, "integer"),
        ("phase", {"fault": "503", "failure_rate": 2}, "failure_rate"),
        ("phase", {"phases": "503"}, "list"),
        ("phase", [1], "JSON object"),
        ("replies", {"faults": [503]}, "fault specs"),
        ("replies", {"faults": ["refuse"]}, "phase"),
        ("latency", {"seconds": -1}, ">= 0"),
        ("latency", {"seconds": True}, "seconds"),
    ],
)
async def test_bad_control_requests_are_400s_that_say_why(
    fake: FakeOpenAIServer, client: httpx.AsyncClient, path: str, body: Any, problem: str
) -> None:
    answer = await control(fake, client, path, body)

    assert answer.status_code == 400
    assert problem in answer.json()["error"]
    assert fake.phase is None


async def test_a_body_that_is_not_json_is_a_400(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    answer = await client.post(f"{fake.control_url}/phase", content=b"{oops")

    assert answer.status_code == 400
    assert answer.json() == {"error": "the body must be JSON"}


async def test_recorded_requests_are_listed_with_their_arrival_times(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    assert await statuses(fake, client, 2) == [200, 200]
    listed = (await client.get(f"{fake.control_url}/requests")).json()["requests"]
    assert [(r["method"], r["path"]) for r in listed] == [("POST", "/v1/chat/completions")] * 2
    assert [r["arrived_at"] for r in listed] == [r.arrived_at for r in fake.requests]
