"""Runs one task to a result: rate limit, provider call, classify, back off, retry.

Policy lives in `resilience/` (token bucket, backoff); this module does the
waiting and the I/O. The task's deadline bounds everything: no wait or retry
outlives it.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence

from aiproc.server.config import ProcessorConfig
from aiproc.server.core.errors import ProviderError, ProviderTimeout, RateLimited
from aiproc.server.core.models import (
    ErrorCode,
    ProgressEvent,
    ProgressKind,
    Task,
    TaskError,
    TaskResult,
    TaskState,
)
from aiproc.server.core.stats import ProviderCounters
from aiproc.server.providers.base import Completion, CompletionRequest, Provider
from aiproc.server.providers.prompt import build_messages
from aiproc.server.resilience.backoff import Backoff
from aiproc.server.resilience.clock import Clock
from aiproc.server.resilience.rate_limiter import RateLimiter

log = logging.getLogger(__name__)


class _GaveUp(Exception):
    """The attempts ended without a completion; carries why and how many were made."""

    def __init__(self, code: ErrorCode, message: str, attempts: int) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.attempts = attempts


class TaskRunner:
    """Turns a RUNNING task into its TaskResult; never raises except CancelledError."""

    def __init__(
        self,
        *,
        config: ProcessorConfig,
        providers: Sequence[Provider],
        provider_limits: Mapping[str, int],
        limiter: RateLimiter,
        clock: Clock,
        on_progress: Callable[[ProgressEvent], None],
        on_attempt: Callable[[str], Awaitable[None]],
        on_retry: Callable[[], None],
        rng: random.Random | None = None,
    ) -> None:
        if not providers:
            raise ValueError("at least one provider is required")
        self._config = config
        self._providers = list(providers)
        self._limiter = limiter
        self._clock = clock
        self._on_progress = on_progress
        self._on_attempt = on_attempt
        self._on_retry = on_retry
        self._rng = rng or random.Random()
        self._backoff = Backoff(
            config.initial_backoff, config.max_backoff, config.backoff_multiplier
        )
        self._calls = asyncio.Semaphore(config.max_concurrent_requests)
        self._provider_slots = {
            p.name: asyncio.Semaphore(provider_limits.get(p.name, config.max_concurrent_requests))
            for p in self._providers
        }
        self.provider_counters = {
            p.name: ProviderCounters(name=p.name, kind=p.kind, model=p.model)
            for p in self._providers
        }

    def timeout_for(self, task: Task) -> float:
        """The task's own timeout, capped by worker_timeout."""
        own = task.spec.timeout
        cap = self._config.worker_timeout
        return cap if own is None or own <= 0 else min(own, cap)

    async def run(self, task: Task, queue_time: float) -> TaskResult:
        started = self._clock.monotonic()
        timeout = self.timeout_for(task)
        provider = self._providers[0]
        try:
            # The deadline is also enforced inside, so that a doomed retry is
            # not even started; this outer bound catches every other wait.
            async with asyncio.timeout(timeout):
                completion, attempts = await self._attempts(task, provider, started + timeout)
        except TimeoutError:
            return self._failed(
                task,
                provider,
                task.attempts,
                queue_time,
                started,
                ErrorCode.TIMEOUT,
                f"task timed out after {timeout:g}s",
            )
        except _GaveUp as exc:
            return self._failed(
                task, provider, exc.attempts, queue_time, started, exc.code, exc.message
            )
        except Exception:
            log.exception("internal error while processing task %s", task.task_id)
            return self._failed(
                task,
                provider,
                task.attempts,
                queue_time,
                started,
                ErrorCode.INTERNAL,
                "internal error; see the server log",
            )
        return TaskResult(
            task_id=task.task_id,
            client_id=task.client_id,
            url=task.spec.url,
            state=TaskState.SUCCEEDED,
            enhanced_content=completion.content,
            provider=provider.name,
            model=completion.model or provider.model,
            attempts=attempts,
            usage=completion.usage,
            queue_time=queue_time,
            processing_time=self._clock.monotonic() - started,
            completed_at=self._clock.wall(),
            metadata=task.spec.metadata,
        )

    async def _attempts(
        self, task: Task, provider: Provider, deadline: float
    ) -> tuple[Completion, int]:
        retries = 0
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._call(task, provider, deadline), attempt
            except ProviderError as exc:
                delay = self._retry_delay(exc, retries)
                if delay is None or self._clock.monotonic() + delay >= deadline:
                    # No retry left, or waiting would outlive the task.
                    code = exc.error_code
                    if isinstance(exc, ProviderTimeout) and self._clock.monotonic() >= deadline:
                        code = ErrorCode.TIMEOUT
                    raise _GaveUp(code, str(exc), attempt) from exc
                if not isinstance(exc, RateLimited):
                    retries += 1
                self._on_retry()
                self._on_progress(
                    ProgressEvent(
                        task_id=task.task_id,
                        client_id=task.client_id,
                        kind=ProgressKind.RETRYING,
                        at=self._clock.wall(),
                        attempt=attempt,
                        provider=provider.name,
                        message=str(exc),
                        backoff=delay,
                    )
                )
                await self._clock.sleep(delay)

    def _retry_delay(self, error: ProviderError, retries: int) -> float | None:
        """Seconds to wait before trying again, or None when the error is final."""
        if not error.retryable:
            return None
        # A rate-limit answer is the provider asking for patience, not a
        # failure: it does not spend the retry budget.
        if isinstance(error, RateLimited):
            if error.retry_after is not None:
                return error.retry_after
            return self._backoff.delay(retries + 1, self._rng)
        if retries >= self._config.max_retries:
            return None
        return self._backoff.delay(retries + 1, self._rng)

    async def _call(self, task: Task, provider: Provider, deadline: float) -> Completion:
        await self._limiter.acquire()
        async with self._calls, self._provider_slots[provider.name]:
            remaining = max(deadline - self._clock.monotonic(), 0.001)
            request = CompletionRequest(
                messages=build_messages(
                    task.spec,
                    context_window=provider.context_window,
                    max_tokens=self._config.max_tokens,
                ),
                model=task.spec.model or provider.model,
                max_tokens=self._config.max_tokens,
                temperature=self._config.temperature,
                timeout=remaining,
            )
            await self._on_attempt(task.task_id)
            counters = self.provider_counters[provider.name]
            counters.in_flight += 1
            began = self._clock.monotonic()
            ok = False
            try:
                completion = await provider.complete(request)
                ok = True
                return completion
            finally:
                counters.in_flight -= 1
                counters.record(self._clock.monotonic() - began, ok)

    def _failed(
        self,
        task: Task,
        provider: Provider,
        attempts: int,
        queue_time: float,
        started: float,
        code: ErrorCode,
        message: str,
    ) -> TaskResult:
        return TaskResult(
            task_id=task.task_id,
            client_id=task.client_id,
            url=task.spec.url,
            state=TaskState.FAILED,
            error=TaskError(code, message),
            provider=provider.name,
            attempts=attempts,
            queue_time=queue_time,
            processing_time=self._clock.monotonic() - started,
            completed_at=self._clock.wall(),
            metadata=task.spec.metadata,
        )
