"""The runner's retry, backoff, failover and deadline decisions, on a fake clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest

from aiproc.server.config import Config, ProviderConfig, load_config
from aiproc.server.core.errors import (
    AuthenticationFailed,
    InvalidRequest,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    TransientError,
)
from aiproc.server.core.events import EventBus, EventKind
from aiproc.server.core.failover import FailoverManager
from aiproc.server.core.models import (
    ErrorCode,
    ProgressEvent,
    ProgressKind,
    Task,
    TaskResult,
    TaskSpec,
    TaskState,
    TokenUsage,
)
from aiproc.server.core.provider_pool import build_slots
from aiproc.server.core.runner import TaskRunner
from aiproc.server.core.stats import Counters
from aiproc.server.providers.base import Completion, CompletionRequest
from aiproc.server.resilience.clock import FakeClock
from aiproc.server.resilience.rate_limiter import RateLimiter
from aiproc.server.resilience.selection import Selector


class ScriptedProvider:
    """Raises the scripted errors in order, then answers."""

    kind = "test"
    model = "scripted"
    context_window = 8192

    def __init__(self, name: str, script: Sequence[ProviderError], clock: FakeClock) -> None:
        self.name = name
        self.script = list(script)
        self.calls: list[float] = []
        self.timeouts: list[float] = []
        self.clock = clock

    async def complete(self, request: CompletionRequest) -> Completion:
        self.calls.append(self.clock.monotonic())
        self.timeouts.append(request.timeout)
        if self.script:
            raise self.script.pop(0)
        return Completion(f"ok from {self.name}", "scripted-1", TokenUsage(10, 5), "stop")

    async def check_health(self, timeout: float) -> None:  # noqa: ASYNC109
        return None

    async def aclose(self) -> None:
        return None


class Harness:
    def __init__(
        self, providers: Sequence[ScriptedProvider], clock: FakeClock, **sections: Any
    ) -> None:
        processor = {"rate_limit_rps": 1000.0, "rate_limit_burst": 100}
        processor.update(sections.pop("processor", {}))
        config: Config = load_config(env={}, overrides={"processor": processor, **sections})
        self.clock = clock
        self.events = EventBus()
        self.watch = self.events.watch()
        self.progress: list[ProgressEvent] = []
        self.counters = Counters()
        entries = [
            (p, ProviderConfig(name=p.name, kind="test", priority=i + 1))
            for i, p in enumerate(providers)
        ]
        slots = build_slots(entries, config, clock=clock, events=self.events)
        self.failover = FailoverManager(
            slots,
            Selector(config.failover.strategy, random.Random(1)),
            health_checks=False,
            clock=clock,
            events=self.events,
        )

        async def on_attempt(task_id: str) -> None:
            return None

        self.runner = TaskRunner(
            config=config.processor,
            failover_config=config.failover,
            failover=self.failover,
            limiter=RateLimiter(
                config.processor.rate_limit_rps, config.processor.rate_limit_burst, clock
            ),
            counters=self.counters,
            clock=clock,
            on_progress=self.progress.append,
            on_attempt=on_attempt,
            rng=random.Random(1),
        )

    async def run(self, task: Task) -> TaskResult:
        """Runs the task, advancing the fake clock whenever the runner sleeps on it."""
        job = asyncio.create_task(self.runner.run(task, queue_time=0.0))
        while not job.done():
            await asyncio.sleep(0)
            if self.clock.sleepers:
                self.clock.advance(0.001)
        return job.result()

    def event_kinds(self) -> list[EventKind]:
        kinds = []
        while not self.watch._queue.empty():
            event = self.watch._queue.get_nowait()
            assert event is not None
            kinds.append(event.kind)
        return kinds


def make_task(timeout: float | None = None, max_retries: int | None = None) -> Task:
    spec = TaskSpec(
        url="https://example.com/a",
        content="Some content.",
        timeout=timeout,
        max_retries=max_retries,
    )
    return Task(task_id="t" * 32, client_id="c", spec=spec, created_at=0.0)


async def test_transient_errors_are_retried_with_growing_backoff_then_succeed() -> None:
    clock = FakeClock()
    provider = ScriptedProvider("only", [TransientError("503"), TransientError("502")], clock)
    harness = Harness([provider], clock, processor={"initial_backoff": 1.0})
    result = await harness.run(make_task())
    assert result.state is TaskState.SUCCEEDED
    assert result.attempts == 3
    assert [a.error is not None for a in result.history] == [True, True, False]
    gaps = [b - a for a, b in zip(provider.calls, provider.calls[1:], strict=False)]
    # Equal jitter: retry n waits between half and all of initial * multiplier**(n-1).
    assert 0.5 <= gaps[0] <= 1.0 + 0.01
    assert 1.0 <= gaps[1] <= 2.0 + 0.01
    retrying = [e for e in harness.progress if e.kind is ProgressKind.RETRYING]
    assert [e.backoff for e in retrying] == pytest.approx(gaps, abs=0.01)
    assert harness.counters.retried == 2


async def test_retries_stop_at_max_retries_with_the_last_cause() -> None:
    clock = FakeClock()
    provider = ScriptedProvider("only", [TransientError(f"boom {n}") for n in range(10)], clock)
    harness = Harness([provider], clock, processor={"max_retries": 2, "initial_backoff": 0.01})
    result = await harness.run(make_task())
    assert result.state is TaskState.FAILED
    assert result.error is not None
    assert result.error.code is ErrorCode.TRANSIENT
    assert result.error.message == "boom 2"
    assert len(provider.calls) == 3


async def test_a_task_can_raise_or_lower_its_retry_budget() -> None:
    clock = FakeClock()
    provider = ScriptedProvider("only", [TransientError(f"boom {n}") for n in range(10)], clock)
    harness = Harness([provider], clock, processor={"max_retries": 2, "initial_backoff": 0.01})
    assert (await harness.run(make_task(max_retries=5))).attempts == 6
    provider.script = [TransientError("again")]
    assert (await harness.run(make_task(max_retries=0))).attempts == 1


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequest("400 bad"), ErrorCode.INVALID_REQUEST),
        (AuthenticationFailed("401"), ErrorCode.AUTHENTICATION),
    ],
)
async def test_non_retryable_errors_fail_at_once(error: ProviderError, code: ErrorCode) -> None:
    clock = FakeClock()
    provider = ScriptedProvider("only", [error], clock)
    harness = Harness([provider], clock)
    result = await harness.run(make_task())
    assert result.error is not None
    assert result.error.code is code
    assert len(provider.calls) == 1
    assert harness.progress == []


async def test_rate_limits_wait_retry_after_and_do_not_spend_the_retry_budget() -> None:
    clock = FakeClock()
    script: list[ProviderError] = [RateLimited("429", retry_after=2.0) for _ in range(5)]
    provider = ScriptedProvider("only", script, clock)
    harness = Harness([provider], clock, processor={"max_retries": 1})
    result = await harness.run(make_task(timeout=60))
    assert result.state is TaskState.SUCCEEDED
    gaps = [b - a for a, b in zip(provider.calls, provider.calls[1:], strict=False)]
    assert all(gap >= 2.0 for gap in gaps)
    assert len(provider.calls) == 6
    assert EventKind.PAUSED in harness.event_kinds()


async def test_a_wait_that_would_outlive_the_deadline_fails_now() -> None:
    clock = FakeClock()
    provider = ScriptedProvider("only", [RateLimited("429", retry_after=30.0)], clock)
    harness = Harness([provider], clock)
    result = await harness.run(make_task(timeout=5))
    assert result.error is not None
    assert result.error.code is ErrorCode.ALL_PROVIDERS_FAILED
    assert "paused" in result.error.message
    assert len(provider.calls) == 1
    assert clock.monotonic() - provider.calls[0] < 1.0


async def test_provider_timeouts_are_not_retried() -> None:
    clock = FakeClock()
    provider = ScriptedProvider("only", [ProviderTimeout("read timeout")], clock)
    harness = Harness([provider], clock)
    result = await harness.run(make_task())
    assert result.error is not None
    assert result.error.code is ErrorCode.TIMEOUT
    assert len(provider.calls) == 1


async def test_the_call_gets_the_task_timeout_capped_by_worker_timeout() -> None:
    clock = FakeClock()
    provider = ScriptedProvider("only", [], clock)
    harness = Harness([provider], clock, processor={"worker_timeout": 20.0})
    await harness.run(make_task(timeout=5.0))
    await harness.run(make_task(timeout=500.0))
    await harness.run(make_task(timeout=None))
    # Each call ends a little before the task's deadline (see CALL_TIMEOUT_MARGIN).
    assert provider.timeouts == pytest.approx([4.95, 19.95, 19.95])


async def test_an_unexpected_exception_becomes_an_internal_error_result() -> None:
    clock = FakeClock()

    class Broken(ScriptedProvider):
        async def complete(self, request: CompletionRequest) -> Completion:
            raise KeyError("bug")

    harness = Harness([Broken("broken", [], clock)], clock)
    result = await harness.run(make_task())
    assert result.error is not None
    assert result.error.code is ErrorCode.INTERNAL
    assert "bug" not in result.error.message


async def test_a_transient_failure_fails_over_to_the_next_provider_after_retry_delay() -> None:
    clock = FakeClock()
    primary = ScriptedProvider("primary", [TransientError("500 from primary")], clock)
    secondary = ScriptedProvider("secondary", [], clock)
    harness = Harness([primary, secondary], clock, failover={"retry_delay": 0.25})
    result = await harness.run(make_task())
    assert result.state is TaskState.SUCCEEDED
    assert result.provider == "secondary"
    assert secondary.calls[0] - primary.calls[0] == pytest.approx(0.25, abs=0.01)
    assert [e.kind for e in harness.progress] == [ProgressKind.RETRYING, ProgressKind.FAILED_OVER]
    assert harness.counters.failovers == 1
    assert EventKind.FAILOVER in harness.event_kinds()


async def test_when_every_provider_fails_the_result_lists_each_cause() -> None:
    clock = FakeClock()
    primary = ScriptedProvider("primary", [TransientError("p down")] * 5, clock)
    secondary = ScriptedProvider("secondary", [TransientError("s down")] * 5, clock)
    harness = Harness([primary, secondary], clock, processor={"max_retries": 1})
    result = await harness.run(make_task())
    assert result.error is not None
    assert result.error.code is ErrorCode.ALL_PROVIDERS_FAILED
    assert "primary: p down" in result.error.message
    assert "secondary: s down" in result.error.message


async def test_a_rate_limited_provider_is_skipped_while_paused() -> None:
    clock = FakeClock()
    primary = ScriptedProvider("primary", [RateLimited("429", retry_after=10.0)], clock)
    secondary = ScriptedProvider("secondary", [], clock)
    harness = Harness([primary, secondary], clock)
    first = await harness.run(make_task())
    assert first.provider == "secondary"
    second = await harness.run(make_task())
    assert second.provider == "secondary"  # primary still paused
    assert len(primary.calls) == 1
    clock.advance(10.0)
    third = await harness.run(make_task())
    assert third.provider == "primary"


async def test_an_open_breaker_sends_traffic_elsewhere_and_failback_waits_its_delay() -> None:
    clock = FakeClock()
    primary = ScriptedProvider("primary", [TransientError("down")] * 3, clock)
    secondary = ScriptedProvider("secondary", [], clock)
    harness = Harness(
        [primary, secondary],
        clock,
        circuit_breaker={"preset": "strict", "recovery_timeout": 5.0},
        failover={"failback_delay": 20.0, "retry_delay": 0.01},
    )
    for _ in range(3):  # three failures in a row open the strict breaker
        assert (await harness.run(make_task())).provider == "secondary"
    assert EventKind.BREAKER_OPENED in harness.event_kinds()
    calls_when_open = len(primary.calls)
    assert (await harness.run(make_task())).provider == "secondary"
    assert len(primary.calls) == calls_when_open  # no traffic while open
    clock.advance(5.0)  # half-open: the next task is a probe, and it succeeds
    assert (await harness.run(make_task())).provider == "primary"
    kinds = harness.event_kinds()
    assert EventKind.BREAKER_HALF_OPEN in kinds
    assert EventKind.RECOVERED in kinds
    # Recovered, but the failback delay keeps it at the back of the line.
    assert (await harness.run(make_task())).provider == "secondary"
    clock.advance(20.0)
    assert (await harness.run(make_task())).provider == "primary"
    assert EventKind.FAILBACK in harness.event_kinds()


async def test_a_zero_retry_after_still_waits_a_first_backoff() -> None:
    clock = FakeClock()
    provider = ScriptedProvider("only", [RateLimited("429", retry_after=0.0)] * 3, clock)
    harness = Harness([provider], clock, processor={"initial_backoff": 1.0})
    result = await harness.run(make_task(timeout=60))
    assert result.state is TaskState.SUCCEEDED
    gaps = [b - a for a, b in zip(provider.calls, provider.calls[1:], strict=False)]
    assert all(gap >= 0.5 for gap in gaps), gaps  # half of initial_backoff at least
