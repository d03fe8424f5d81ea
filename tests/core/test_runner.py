"""The runner's retry, backoff and deadline decisions, on a fake clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import pytest

from aiproc.server.config import ProcessorConfig
from aiproc.server.core.errors import (
    AuthenticationFailed,
    InvalidRequest,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    TransientError,
)
from aiproc.server.core.models import (
    ErrorCode,
    ProgressEvent,
    Task,
    TaskSpec,
    TaskState,
    TokenUsage,
)
from aiproc.server.core.runner import TaskRunner
from aiproc.server.providers.base import Completion, CompletionRequest
from aiproc.server.resilience.clock import FakeClock
from aiproc.server.resilience.rate_limiter import RateLimiter


class ScriptedProvider:
    """Raises the scripted errors in order, then answers."""

    kind = "test"
    model = "scripted"
    context_window = 8192

    def __init__(self, script: Sequence[ProviderError]) -> None:
        self.name = "scripted"
        self.script = list(script)
        self.calls: list[float] = []
        self.timeouts: list[float] = []
        self.clock: FakeClock | None = None

    async def complete(self, request: CompletionRequest) -> Completion:
        assert self.clock is not None
        self.calls.append(self.clock.monotonic())
        self.timeouts.append(request.timeout)
        if self.script:
            raise self.script.pop(0)
        return Completion("ok", "scripted-1", TokenUsage(10, 5), "stop")

    async def aclose(self) -> None:
        return None


def make_runner(
    provider: ScriptedProvider, clock: FakeClock, **config: object
) -> tuple[TaskRunner, list[ProgressEvent]]:
    settings: dict[str, object] = {"rate_limit_rps": 1000.0, "rate_limit_burst": 100}
    settings.update(config)
    cfg = ProcessorConfig(**settings)  # type: ignore[arg-type]
    provider.clock = clock
    events: list[ProgressEvent] = []

    async def on_attempt(task_id: str) -> None:
        return None

    runner = TaskRunner(
        config=cfg,
        providers=[provider],
        provider_limits={},
        limiter=RateLimiter(cfg.rate_limit_rps, cfg.rate_limit_burst, clock),
        clock=clock,
        on_progress=events.append,
        on_attempt=on_attempt,
        on_retry=lambda: None,
        rng=random.Random(1),
    )
    return runner, events


def make_task(timeout: float | None = None) -> Task:
    spec = TaskSpec(url="https://example.com/a", content="Some content.", timeout=timeout)
    return Task(task_id="t" * 32, client_id="c", spec=spec, created_at=0.0)


async def run_with_clock(runner: TaskRunner, task: Task, clock: FakeClock) -> object:
    """Runs the task, advancing the fake clock whenever the runner sleeps on it."""
    job = asyncio.create_task(runner.run(task, queue_time=0.0))
    while not job.done():
        await asyncio.sleep(0)
        if clock.sleepers:
            clock.advance(0.001)
    return job.result()


async def test_transient_errors_are_retried_with_growing_backoff_then_succeed() -> None:
    clock = FakeClock()
    provider = ScriptedProvider([TransientError("503"), TransientError("502")])
    runner, events = make_runner(provider, clock, initial_backoff=1.0, backoff_multiplier=2.0)
    result = await run_with_clock(runner, make_task(), clock)
    assert result.state is TaskState.SUCCEEDED  # type: ignore[attr-defined]
    assert result.attempts == 3  # type: ignore[attr-defined]
    gaps = [b - a for a, b in zip(provider.calls, provider.calls[1:], strict=False)]
    # Equal jitter: retry n waits between half and all of initial * multiplier**(n-1).
    assert 0.5 <= gaps[0] <= 1.0 + 0.01
    assert 1.0 <= gaps[1] <= 2.0 + 0.01
    assert [e.backoff for e in events] == pytest.approx(gaps, abs=0.01)


async def test_retries_stop_at_max_retries_with_the_last_cause() -> None:
    clock = FakeClock()
    provider = ScriptedProvider([TransientError(f"boom {n}") for n in range(10)])
    runner, _ = make_runner(provider, clock, max_retries=2, initial_backoff=0.01)
    result = await run_with_clock(runner, make_task(), clock)
    assert result.state is TaskState.FAILED  # type: ignore[attr-defined]
    assert result.error.code is ErrorCode.TRANSIENT  # type: ignore[attr-defined]
    assert result.error.message == "boom 2"  # type: ignore[attr-defined]
    assert len(provider.calls) == 3


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (InvalidRequest("400 bad"), ErrorCode.INVALID_REQUEST),
        (AuthenticationFailed("401"), ErrorCode.AUTHENTICATION),
    ],
)
async def test_non_retryable_errors_fail_at_once(error: ProviderError, code: ErrorCode) -> None:
    clock = FakeClock()
    provider = ScriptedProvider([error])
    runner, events = make_runner(provider, clock)
    result = await run_with_clock(runner, make_task(), clock)
    assert result.error.code is code  # type: ignore[attr-defined]
    assert len(provider.calls) == 1
    assert events == []


async def test_rate_limits_wait_retry_after_and_do_not_spend_the_retry_budget() -> None:
    clock = FakeClock()
    script: list[ProviderError] = [RateLimited("429", retry_after=2.0) for _ in range(5)]
    provider = ScriptedProvider(script)
    runner, _ = make_runner(provider, clock, max_retries=1)
    result = await run_with_clock(runner, make_task(timeout=60), clock)
    assert result.state is TaskState.SUCCEEDED  # type: ignore[attr-defined]
    gaps = [b - a for a, b in zip(provider.calls, provider.calls[1:], strict=False)]
    assert all(gap >= 2.0 for gap in gaps)
    assert len(provider.calls) == 6


async def test_a_retry_that_would_outlive_the_deadline_fails_now() -> None:
    clock = FakeClock()
    provider = ScriptedProvider([RateLimited("429", retry_after=30.0)])
    runner, _ = make_runner(provider, clock)
    result = await run_with_clock(runner, make_task(timeout=5), clock)
    assert result.error.code is ErrorCode.RATE_LIMITED  # type: ignore[attr-defined]
    assert len(provider.calls) == 1
    assert clock.monotonic() - provider.calls[0] < 1.0


async def test_provider_timeouts_are_not_retried() -> None:
    clock = FakeClock()
    provider = ScriptedProvider([ProviderTimeout("read timeout")])
    runner, _ = make_runner(provider, clock)
    result = await run_with_clock(runner, make_task(), clock)
    assert result.error.code is ErrorCode.TIMEOUT  # type: ignore[attr-defined]
    assert len(provider.calls) == 1


async def test_the_call_gets_the_task_timeout_capped_by_worker_timeout() -> None:
    clock = FakeClock()
    provider = ScriptedProvider([])
    runner, _ = make_runner(provider, clock, worker_timeout=20.0)
    await run_with_clock(runner, make_task(timeout=5.0), clock)
    await run_with_clock(runner, make_task(timeout=500.0), clock)
    await run_with_clock(runner, make_task(timeout=None), clock)
    assert provider.timeouts == pytest.approx([5.0, 20.0, 20.0])


async def test_an_unexpected_exception_becomes_an_internal_error_result() -> None:
    clock = FakeClock()

    class Broken(ScriptedProvider):
        async def complete(self, request: CompletionRequest) -> Completion:
            raise KeyError("bug")

    runner, _ = make_runner(Broken([]), clock)
    result = await run_with_clock(runner, make_task(), clock)
    assert result.error.code is ErrorCode.INTERNAL  # type: ignore[attr-defined]
    assert "bug" not in result.error.message  # type: ignore[attr-defined]
