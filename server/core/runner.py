"""Runs one task to a result: choose a provider, respect the limits, call, classify, retry.

Policy lives in `resilience/` (token buckets, backoff, breakers, selection)
and in the failover manager; this module does the waiting and the I/O. The
task's deadline bounds everything: no wait or retry outlives it.

What each provider error does (the classes are in core/errors.py):
- RateLimited: pauses that provider for its Retry-After (or a backoff); the
  task moves to another provider or waits; the retry budget is not spent.
- TransientError, BadResponse (retryable): spend one retry; the next attempt
  goes to another eligible provider after `retry_delay` (failover), or, with
  none, to any provider after an exponential backoff.
- ProviderTimeout: recorded, not retried: the task fails with TIMEOUT.
- InvalidRequest, AuthenticationFailed: the task fails at once.
- No eligible provider (breakers open, paused, unavailable): wait for one
  within the deadline, else fail with ALL_PROVIDERS_FAILED.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.metrics import NoOpMeter
from opentelemetry.trace import NoOpTracer, Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.util.types import AttributeValue

from aiproc.server.config import FailoverConfig, ProcessorConfig
from aiproc.server.core.errors import ProviderError, ProviderTimeout, RateLimited
from aiproc.server.core.failover import FailoverManager, Lease, NoProvider
from aiproc.server.core.models import (
    AttemptRecord,
    ErrorCode,
    ProgressEvent,
    ProgressKind,
    Task,
    TaskError,
    TaskResult,
    TaskState,
)
from aiproc.server.core.stats import Counters
from aiproc.server.providers.base import Completion, CompletionRequest
from aiproc.server.providers.prompt import build_messages, estimate_tokens
from aiproc.server.resilience.backoff import Backoff
from aiproc.server.resilience.clock import Clock
from aiproc.server.resilience.rate_limiter import Limiter
from aiproc.server.telemetry import genai
from aiproc.server.telemetry.current_span import CurrentSpan
from aiproc.server.telemetry.metrics import Metrics

log = logging.getLogger(__name__)

CALL_TIMEOUT_MARGIN = 0.05
"""Seconds a provider call ends before the task's deadline, at most."""


class _GaveUp(Exception):
    """The attempts ended without a completion."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class _Repick(Exception):
    """The leased provider was paused while this call waited: choose again."""


@dataclass(slots=True)
class _Progress:
    """What one task's attempts have done so far."""

    history: list[AttemptRecord] = field(default_factory=list)
    causes: dict[str, str] = field(default_factory=dict)
    """Each failed provider's latest error, in the order they first failed."""
    provider: str = ""
    retries: int = 0
    switches: int = 0


class TaskRunner:
    """Turns a RUNNING task into its TaskResult; never raises except CancelledError."""

    def __init__(
        self,
        *,
        config: ProcessorConfig,
        failover_config: FailoverConfig,
        failover: FailoverManager,
        limiter: Limiter,
        counters: Counters,
        clock: Clock,
        on_progress: Callable[[ProgressEvent], None],
        on_attempt: Callable[[str], Awaitable[None]],
        rng: random.Random | None = None,
        tracer: Tracer | None = None,
        metrics: Metrics | None = None,
        record_content: bool = False,
    ) -> None:
        """`record_content` puts prompt and completion text on the provider spans."""
        self._tracer = tracer or NoOpTracer()
        self._metrics = metrics or Metrics(NoOpMeter("aiproc"), dict, dict)
        self._record_content = record_content
        self._config = config
        self._failover_config = failover_config
        self._failover = failover
        self._limiter = limiter
        self._counters = counters
        self._clock = clock
        self._on_progress = on_progress
        self._on_attempt = on_attempt
        self._rng = rng or random.Random()
        self._backoff = Backoff(
            config.initial_backoff, config.max_backoff, config.backoff_multiplier
        )
        self._calls = asyncio.Semaphore(config.max_concurrent_requests)

    def timeout_for(self, task: Task) -> float:
        """The task's own timeout, capped by worker_timeout."""
        own = task.spec.timeout
        cap = self._config.worker_timeout
        return cap if own is None or own <= 0 else min(own, cap)

    async def run(self, task: Task, queue_time: float, trace_id: str = "") -> TaskResult:
        """Runs `task` to its result; `trace_id` (hex, "" when untraced) goes on the result."""
        started = self._clock.monotonic()
        timeout = self.timeout_for(task)
        progress = _Progress()
        try:
            # The deadline is also checked before every wait, so a doomed
            # retry is not even started; this outer bound catches the rest.
            async with asyncio.timeout(timeout):
                completion = await self._attempts(task, started + timeout, progress)
        except TimeoutError:
            error = TaskError(ErrorCode.TIMEOUT, f"task timed out after {timeout:g}s")
            return self._failed(task, progress, queue_time, started, trace_id, error)
        except _GaveUp as exc:
            error = TaskError(exc.code, exc.message)
            return self._failed(task, progress, queue_time, started, trace_id, error)
        except Exception:
            log.exception("internal error while processing task %s", task.task_id)
            error = TaskError(ErrorCode.INTERNAL, "internal error; see the server log")
            return self._failed(task, progress, queue_time, started, trace_id, error)
        return TaskResult(
            task_id=task.task_id,
            client_id=task.client_id,
            url=task.spec.url,
            state=TaskState.SUCCEEDED,
            enhanced_content=completion.content,
            provider=progress.provider,
            model=completion.model,
            attempts=len(progress.history),
            usage=completion.usage,
            queue_time=queue_time,
            processing_time=self._clock.monotonic() - started,
            trace_id=trace_id,
            completed_at=self._clock.wall(),
            metadata=task.spec.metadata,
            history=tuple(progress.history),
        )

    async def _attempts(self, task: Task, deadline: float, progress: _Progress) -> Completion:
        max_retries = task.spec.max_retries
        if max_retries is None:
            max_retries = self._config.max_retries
        failed_last: str = ""
        while True:
            choice = self._failover.choose(avoid=progress.causes.keys())
            if isinstance(choice, NoProvider):
                await self._wait_for_provider(choice, deadline, progress)
                continue
            target = choice.slot.name
            if failed_last and failed_last != target:
                self._note_failover(task, failed_last, target, progress)
            progress.provider = target
            try:
                return await self._attempt(task, choice, deadline, progress)
            except _Repick:
                continue
            except RateLimited as exc:
                # Not a failure of the task: the provider is paused (see
                # FailoverManager.rate_limited) and the next choice avoids it.
                failed_last = ""
                self._check_time(deadline, 0.0, exc)
                continue
            except ProviderError as exc:
                progress.causes[target] = str(exc)
                if isinstance(exc, ProviderTimeout) or not exc.retryable:
                    raise _GaveUp(exc.error_code, str(exc)) from exc
                if progress.retries >= max_retries:
                    raise self._exhausted(exc, progress) from exc
                progress.retries += 1
                delay = self._delay_after(target, progress)
                self._check_time(deadline, delay, exc)
                self._counters.retried += 1
                self._metrics.retried()
                trace.get_current_span().add_event(
                    "retry",
                    {
                        "aiproc.provider": target,
                        "aiproc.attempt": len(progress.history),
                        "aiproc.backoff_seconds": delay,
                        "error.type": exc.error_code.value,
                    },
                )
                self._on_progress(
                    ProgressEvent(
                        task_id=task.task_id,
                        client_id=task.client_id,
                        kind=ProgressKind.RETRYING,
                        at=self._clock.wall(),
                        attempt=len(progress.history),
                        provider=target,
                        message=str(exc),
                        backoff=delay,
                    )
                )
                failed_last = target
                await self._clock.sleep(delay)

    def _delay_after(self, failed: str, progress: _Progress) -> float:
        """retry_delay when the next attempt can go elsewhere (a failover), else backoff."""
        if progress.switches < self._failover_config.max_retries and self._failover.has_alternative(
            exclude=failed
        ):
            progress.switches += 1
            return self._failover_config.retry_delay
        return self._backoff.delay(progress.retries, self._rng)

    def _check_time(self, deadline: float, delay: float, error: ProviderError) -> None:
        """Fails the task now with `error` when waiting `delay` would outlive it."""
        if self._clock.monotonic() + delay >= deadline:
            raise _GaveUp(error.error_code, f"{error} (no time left to retry)")

    async def _wait_for_provider(
        self, choice: NoProvider, deadline: float, progress: _Progress
    ) -> None:
        """Waits for a pause to end or a breaker to half-open, within the deadline."""
        delay = choice.wait
        if delay is None:
            delay = self._backoff.delay(progress.retries + 1, self._rng)
        if self._clock.monotonic() + delay >= deadline:
            raise _GaveUp(
                ErrorCode.ALL_PROVIDERS_FAILED,
                f"no provider available before the task's deadline: {choice.reasons}",
            )
        self._count_rate_limit_wait()
        began = self._clock.wall()
        await self._clock.sleep(delay)
        self._waited("wait for a provider", began, delay)

    def _exhausted(self, error: ProviderError, progress: _Progress) -> _GaveUp:
        if len(progress.causes) > 1:
            listed = "; ".join(f"{name}: {cause}" for name, cause in progress.causes.items())
            return _GaveUp(ErrorCode.ALL_PROVIDERS_FAILED, f"all providers failed: {listed}")
        return _GaveUp(error.error_code, str(error))

    def _note_failover(self, task: Task, source: str, target: str, progress: _Progress) -> None:
        self._counters.failovers += 1
        reason = progress.causes.get(source, "")
        self._failover.failed_over(task.task_id, source, target, reason)
        self._on_progress(
            ProgressEvent(
                task_id=task.task_id,
                client_id=task.client_id,
                kind=ProgressKind.FAILED_OVER,
                at=self._clock.wall(),
                attempt=len(progress.history) + 1,
                provider=target,
                message=f"from {source}: {reason}",
            )
        )

    async def _attempt(
        self, task: Task, lease: Lease, deadline: float, progress: _Progress
    ) -> Completion:
        """One call on a lease; every way out settles the lease exactly once."""
        slot = lease.slot
        provider = slot.provider
        messages = build_messages(
            task.spec, context_window=provider.context_window, max_tokens=self._config.max_tokens
        )
        estimate = sum(estimate_tokens(m.content) for m in messages) + self._config.max_tokens
        settled = reserved = called = False
        try:
            await self._admit(lease, estimate, deadline)
            reserved = True
            async with self._calls, slot.slots:
                if slot.quota.paused_for(self._clock.monotonic()) > 0:
                    raise _Repick  # a 429 arrived while this call queued
                request = CompletionRequest(
                    messages=messages,
                    model=task.spec.model or provider.model,
                    max_tokens=self._config.max_tokens,
                    temperature=self._config.temperature,
                    timeout=self._call_timeout(deadline),
                )
                await self._on_attempt(task.task_id)
                began_wall, began = self._clock.wall(), self._clock.monotonic()
                slot.in_flight += 1
                called = True
                try:
                    with self._provider_span(lease, request, len(progress.history) + 1) as span:
                        try:
                            completion = await provider.complete(request)
                        except ProviderError as exc:
                            span.set_status(Status(StatusCode.ERROR, str(exc)))
                            span.set_attribute(genai.ERROR_TYPE, exc.error_code.value)
                            self._measure_call(lease, request, began, None, exc)
                            raise
                        self._describe_completion(span, completion)
                        self._measure_call(lease, request, began, completion, None)
                except ProviderError as exc:
                    settled = True
                    self._settle_failure(lease, exc, progress, began_wall, began)
                    raise
                finally:
                    slot.in_flight -= 1
            latency = self._clock.monotonic() - began
            settled = True
            self._failover.succeeded(lease, latency)
            actual = completion.usage.input_tokens + completion.usage.output_tokens
            if actual:
                slot.quota.correct(self._clock.monotonic(), estimate, actual)
            progress.history.append(AttemptRecord(provider.name, began_wall, latency))
            return completion
        finally:
            if not settled:
                self._failover.released(lease)
            if reserved and not called:
                # The quota paid for a call that never went out: give it back.
                slot.quota.cancel(self._clock.monotonic(), estimate)

    def _call_timeout(self, deadline: float) -> float:
        """The remaining time, less a small margin: a provider that hangs should time out
        itself (and be counted as failing) just before the task's deadline cancels it."""
        remaining = deadline - self._clock.monotonic()
        return max(remaining - min(CALL_TIMEOUT_MARGIN, remaining * 0.1), 0.001)

    def _provider_span(self, lease: Lease, request: CompletionRequest, attempt: int) -> CurrentSpan:
        """The GenAI client span of one provider call (the HTTP call nests beneath it)."""
        provider = lease.slot.provider
        attributes: dict[str, AttributeValue] = {
            genai.OPERATION_NAME: genai.OPERATION,
            genai.PROVIDER_NAME: genai.provider_name(provider.kind),
            genai.REQUEST_MODEL: request.model,
            genai.REQUEST_MAX_TOKENS: request.max_tokens,
            genai.REQUEST_TEMPERATURE: request.temperature,
            "aiproc.provider": provider.name,
            "aiproc.attempt": attempt,
            **genai.server_attributes(lease.slot.config.base_url),
        }
        if self._record_content:
            attributes[genai.INPUT_MESSAGES] = json.dumps(
                [{"role": m.role, "content": m.content} for m in request.messages]
            )
        return CurrentSpan(
            self._tracer.start_span(
                genai.span_name(request.model), kind=SpanKind.CLIENT, attributes=attributes
            )
        )

    def _measure_call(
        self,
        lease: Lease,
        request: CompletionRequest,
        began: float,
        completion: Completion | None,
        error: ProviderError | None,
    ) -> None:
        usage = completion.usage if completion is not None else None
        self._metrics.provider_call(
            provider=lease.slot.name,
            kind=lease.slot.provider.kind,
            model=request.model,
            duration=self._clock.monotonic() - began,
            outcome="ok" if error is None else "error",
            input_tokens=usage.input_tokens if usage is not None else None,
            output_tokens=usage.output_tokens if usage is not None else None,
            error_type=error.error_code.value if error is not None else None,
        )

    def _describe_completion(self, span: Span, completion: Completion) -> None:
        span.set_attribute(genai.RESPONSE_MODEL, completion.model)
        if completion.finish_reason:
            span.set_attribute(genai.RESPONSE_FINISH_REASONS, [completion.finish_reason])
        span.set_attribute(genai.USAGE_INPUT_TOKENS, completion.usage.input_tokens)
        span.set_attribute(genai.USAGE_OUTPUT_TOKENS, completion.usage.output_tokens)
        if self._record_content:
            output = [{"role": "assistant", "content": completion.content}]
            span.set_attribute(genai.OUTPUT_MESSAGES, json.dumps(output))

    def _count_rate_limit_wait(self) -> None:
        self._counters.rate_limit_waits += 1
        self._metrics.rate_limit_waited()

    def _waited(self, name: str, began: float, seconds: float) -> None:
        """Records a finished wait as a span of its real length, under the current span."""
        if seconds <= 0:
            return
        span = self._tracer.start_span(name, start_time=int(began * 1e9))
        span.end(end_time=int((began + seconds) * 1e9))

    async def _admit(self, lease: Lease, estimate: int, deadline: float) -> None:
        """Waits for the global rate limit, then the provider's own quota."""
        began = self._clock.wall()
        waited = await self._limiter.acquire()
        if waited > 0:
            self._count_rate_limit_wait()
            self._waited("rate limit wait", began, waited)
        quota = lease.slot.quota
        wait = quota.reserve(self._clock.monotonic(), estimate)
        if wait <= 0:
            return
        if self._clock.monotonic() + wait >= deadline:
            quota.cancel(self._clock.monotonic(), estimate)
            raise _GaveUp(
                ErrorCode.RATE_LIMITED,
                f"{lease.slot.name}: its quota allows no call before the task's deadline",
            )
        self._count_rate_limit_wait()
        began = self._clock.wall()
        try:
            await self._clock.sleep(wait)
        except BaseException:
            quota.cancel(self._clock.monotonic(), estimate)
            raise
        self._waited(f"provider quota wait ({lease.slot.name})", began, wait)

    def _settle_failure(
        self,
        lease: Lease,
        error: ProviderError,
        progress: _Progress,
        began_wall: float,
        began: float,
    ) -> None:
        duration = self._clock.monotonic() - began
        progress.history.append(
            AttemptRecord(
                lease.slot.name, began_wall, duration, TaskError(error.error_code, str(error))
            )
        )
        if isinstance(error, RateLimited):
            # At least a first backoff: "Retry-After: 0" must not become a hot loop.
            pause = max(error.retry_after or 0.0, self._backoff.delay(1, self._rng))
            self._failover.rate_limited(lease, pause, str(error))
        else:
            self._failover.failed(lease, error)

    def _failed(
        self,
        task: Task,
        progress: _Progress,
        queue_time: float,
        started: float,
        trace_id: str,
        error: TaskError,
    ) -> TaskResult:
        return TaskResult(
            task_id=task.task_id,
            client_id=task.client_id,
            url=task.spec.url,
            state=TaskState.FAILED,
            error=error,
            provider=progress.provider,
            attempts=len(progress.history),
            queue_time=queue_time,
            processing_time=self._clock.monotonic() - started,
            trace_id=trace_id,
            completed_at=self._clock.wall(),
            metadata=task.spec.metadata,
            history=tuple(progress.history),
        )
