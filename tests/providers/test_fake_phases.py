"""Phases of faults on the fake provider: by count, by time, by chance, and outages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from aiproc.server.fakes import FakeOpenAIServer, FakeReply, HttpError, Phase, Refuse, Reset
from aiproc.server.fakes.phases import PhaseSchedule
from aiproc.server.resilience.clock import FakeClock

CHAT = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def timed_fake(clock: FakeClock) -> AsyncIterator[FakeOpenAIServer]:
    async with FakeOpenAIServer(clock=clock) as server:
        yield server


async def statuses(fake: FakeOpenAIServer, client: httpx.AsyncClient, n: int) -> list[int]:
    url = f"{fake.base_url}/chat/completions"
    return [(await client.post(url, json=CHAT)).status_code for _ in range(n)]


async def test_a_phase_by_count_then_success(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.set_phase(Phase(HttpError(500), requests=3))

    assert await statuses(fake, client, 5) == [500, 500, 500, 200, 200]
    assert fake.phase is None


async def test_phases_follow_one_another(fake: FakeOpenAIServer, client: httpx.AsyncClient) -> None:
    fake.set_phases(
        [Phase(HttpError(503), requests=2), Phase(HttpError(429, retry_after=2), requests=1)]
    )

    assert await statuses(fake, client, 4) == [503, 503, 429, 200]


async def test_a_phase_without_limits_lasts_until_told_otherwise(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.set_phase(Phase(HttpError(429, retry_after=2)))
    assert await statuses(fake, client, 20) == [429] * 20

    fake.set_phases([])

    assert await statuses(fake, client, 1) == [200]


async def test_queued_replies_go_first_and_do_not_count_in_the_phase(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.set_phase(Phase(HttpError(500), requests=1))
    fake.enqueue(FakeReply(status=404))

    assert await statuses(fake, client, 3) == [404, 500, 200]


async def test_phases_by_duration_end_on_the_clock(
    timed_fake: FakeOpenAIServer, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    timed_fake.set_phases(
        [Phase(HttpError(503), duration=5), Phase(HttpError(502), duration=5, requests=10)]
    )
    assert await statuses(timed_fake, client, 2) == [503, 503]

    clock.advance(5)
    assert await statuses(timed_fake, client, 2) == [502, 502]

    clock.advance(5)
    assert await statuses(timed_fake, client, 1) == [200]


async def test_a_refuse_phase_stops_listening_then_listens_again_on_the_same_port(
    timed_fake: FakeOpenAIServer, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    url = timed_fake.base_url
    assert await statuses(timed_fake, client, 1) == [200]  # leaves a pooled connection

    timed_fake.set_phase(Phase(Refuse(), duration=5))

    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(timed_fake.host, timed_fake.port)
    with pytest.raises(httpx.TransportError):
        await client.post(f"{url}/chat/completions", json=CHAT)
    assert not timed_fake.stats().listening

    clock.advance(5)
    await timed_fake.wait_for_listening()

    assert timed_fake.base_url == url
    assert await statuses(timed_fake, client, 1) == [200]
    assert timed_fake.phase is None


async def test_a_refuse_phase_on_the_real_clock_ends_by_itself(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.set_phases([Phase(Refuse(), duration=0.05), Phase(HttpError(503), requests=1)])
    assert not fake.stats().listening

    await fake.wait_for_listening()

    assert await statuses(fake, client, 2) == [503, 200]


async def test_an_outage_after_a_count_lets_the_last_answer_out(
    timed_fake: FakeOpenAIServer, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    timed_fake.set_phases([Phase(HttpError(500), requests=1), Phase(Refuse(), duration=1)])

    assert await statuses(timed_fake, client, 1) == [500]
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection(timed_fake.host, timed_fake.port)

    clock.advance(1)
    await timed_fake.wait_for_listening()
    assert await statuses(timed_fake, client, 1) == [200]


async def test_setting_phases_ends_an_outage(
    timed_fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    timed_fake.set_phase(Phase(Refuse()))
    assert not timed_fake.stats().listening

    timed_fake.reset()
    await timed_fake.wait_for_listening()

    assert await statuses(timed_fake, client, 1) == [200]


async def test_a_probability_phase_replays_from_its_seed(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    chaos = Phase(HttpError(500), failure_rate=0.3, seed=11)

    fake.set_phase(chaos)
    first = await statuses(fake, client, 40)
    fake.set_phase(chaos)
    again = await statuses(fake, client, 40)
    fake.set_phase(Phase(HttpError(500), failure_rate=0.3, seed=12))
    other = await statuses(fake, client, 40)

    assert first == again != other
    assert 0 < first.count(500) < 40
    assert set(first) == {200, 500}


def test_a_schedule_starts_each_phase_when_the_last_one_ended() -> None:
    now = [0.0]
    schedule = PhaseSchedule(lambda: now[0])
    schedule.set([Phase(Reset(), duration=2), Phase(HttpError(503), duration=3), Phase()])

    now[0] = 4.0  # the second phase began at 2, not now
    assert schedule.current == Phase(HttpError(503), duration=3)
    assert schedule.time_left() == 1.0
    now[0] = 5.0
    assert schedule.current == Phase()
    assert schedule.time_left() is None


def test_a_schedule_counts_only_the_draws_of_its_phase() -> None:
    schedule = PhaseSchedule(lambda: 0.0)
    schedule.set([Phase(Reset(), requests=2), Phase(HttpError(503), requests=1)])

    assert [schedule.draw() for _ in range(4)] == [Reset(), Reset(), HttpError(503), None]
    assert schedule.current is None


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"requests": 0}, "requests"),
        ({"duration": 0}, "duration"),
        ({"failure_rate": 1.5}, "failure_rate"),
        ({"fault": Refuse(), "requests": 3}, "refuse"),
        ({"fault": Refuse(), "duration": 1, "failure_rate": 0.5}, "refuse"),
    ],
)
def test_impossible_phases_are_refused(options: dict[str, object], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        Phase(**options)  # type: ignore[arg-type]
