"""The processor: accepts tasks, runs them on the worker pool, and hands results to the hub.

This is the one object the API layer talks to. It knows nothing of gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import replace

from opentelemetry.metrics import NoOpMeter
from opentelemetry.trace import NoOpTracer, Span, Status, StatusCode

from aiproc.server.config import Config, ProviderConfig
from aiproc.server.core.errors import FailedPrecondition, NotFound, QueueFull, ShuttingDown
from aiproc.server.core.events import EventBus
from aiproc.server.core.failover import FailoverManager
from aiproc.server.core.health_monitor import HealthMonitor
from aiproc.server.core.hub import ResultsHub
from aiproc.server.core.models import (
    ErrorCode,
    Priority,
    ProgressEvent,
    ProgressKind,
    Task,
    TaskError,
    TaskResult,
    TaskSpec,
    TaskState,
)
from aiproc.server.core.provider_pool import build_slots
from aiproc.server.core.queue import QueueClosed, TaskQueue
from aiproc.server.core.runner import TaskRunner
from aiproc.server.core.stats import Counters, LatencyWindow, ProcessorStats
from aiproc.server.core.workers import WorkerPool
from aiproc.server.providers.base import Provider
from aiproc.server.resilience.clock import Clock, SystemClock
from aiproc.server.resilience.rate_limiter import RateLimiter
from aiproc.server.resilience.selection import Selector
from aiproc.server.store.base import TaskStore
from aiproc.server.telemetry.metrics import Metrics
from aiproc.server.telemetry.propagation import extract, inject_current
from aiproc.server.telemetry.setup import Telemetry

log = logging.getLogger(__name__)


def _nanos(epoch_seconds: float) -> int:
    return int(epoch_seconds * 1e9)


def _trace_id(span: Span) -> str:
    """The span's trace id in hex, or "" when the span is not recorded."""
    context = span.get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""


EXPIRY_INTERVAL = 30.0


class Processor:
    """Owns the queue, the worker pool, the runner and the results hub over one store."""

    def __init__(
        self,
        config: Config,
        store: TaskStore,
        providers: Sequence[tuple[Provider, ProviderConfig]],
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config.processor
        self._max_crashes = config.server.max_crashes
        self._idempotency_window = config.server.idempotency_window
        self._tracer = telemetry.tracer if telemetry is not None else NoOpTracer()
        self.store = store
        self.clock = clock or SystemClock()
        self.queue = TaskQueue(self.config.queue_size)
        self.hub = ResultsHub(store)
        self.events = EventBus()
        self.counters = Counters()
        self.queue_latency = LatencyWindow()
        self.processing_latency = LatencyWindow()
        self.limiter = RateLimiter(
            self.config.rate_limit_rps, self.config.rate_limit_burst, self.clock
        )
        slots = build_slots(providers, config, clock=self.clock, events=self.events)
        self.failover = FailoverManager(
            slots,
            Selector(config.failover.strategy, rng or random.Random()),
            health_checks=config.health.enabled,
            clock=self.clock,
            events=self.events,
        )
        self.metrics = Metrics(
            telemetry.meter if telemetry is not None else NoOpMeter("aiproc"),
            queue_depths=self.queue.depths,
            breaker_states=lambda: {slot.name: slot.breaker_gauge for slot in slots},
        )
        self.health_monitor = (
            HealthMonitor(slots, config.health, self.clock) if config.health.enabled else None
        )
        self.runner = TaskRunner(
            config=self.config,
            failover_config=config.failover,
            failover=self.failover,
            limiter=self.limiter,
            counters=self.counters,
            clock=self.clock,
            on_progress=self.hub.publish,
            on_attempt=store.record_attempt,
            rng=rng,
            tracer=self._tracer,
            metrics=self.metrics,
            record_content=telemetry.record_content if telemetry is not None else False,
        )
        self.pool = WorkerPool(self.queue, self._process, self.config.num_workers)
        self._sequence = itertools.count(1)
        self._cancel_requested: set[str] = set()
        self._started: set[str] = set()
        """Tasks whose handler has taken its first step (so it will record their end)."""
        self._stopping = False
        self._accepting = False
        self._started_at = 0.0
        self._expiry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Rebuilds the queue from the store's live tasks, then starts the workers.

        A task found RUNNING was running when the previous process died: it
        runs again (at-least-once), unless that has happened max_crashes times,
        when it is dead-lettered instead of crashing the server forever.
        """
        live = sorted(await self.store.live_tasks(), key=lambda t: t.sequence)
        self._sequence = itertools.count(await self.store.last_sequence() + 1)
        for task in live:
            if task.state is TaskState.RUNNING:
                if task.crashes + 1 >= self._max_crashes:
                    await self._finish(task, self._dead_letter(task))
                    continue
                requeued = await self.store.requeue(task.task_id, crashed=True)
                if requeued is None:
                    continue
                task = requeued
            self.queue.restore(task.task_id, task.spec.priority, task.sequence)
        if live:
            log.info("recovered %d unfinished tasks from the store", len(live))
        self._started_at = self.clock.wall()
        self._accepting = True
        self.pool.start()
        if self.health_monitor is not None:
            self.health_monitor.start()
        self._expiry = asyncio.create_task(self._expire_periodically(), name="aiproc-expiry")

    async def submit(self, client_id: str, spec: TaskSpec) -> tuple[Task, bool]:
        """Queues a task; returns it and whether it was an idempotent repeat."""
        if not self._accepting:
            self.counters.rejected += 1
            raise ShuttingDown("the server is shutting down and accepts no new tasks")
        if spec.idempotency_key:
            earlier = await self.store.find_idempotent(client_id, spec.idempotency_key)
            window_start = self.clock.wall() - self._idempotency_window
            if earlier is not None and earlier.created_at >= window_start:
                return earlier, True
        if len(self.queue) >= self.queue.capacity:
            self.counters.rejected += 1
            raise QueueFull(f"queue is full ({self.queue.capacity} tasks waiting); retry later")
        task = Task(
            task_id=uuid.uuid4().hex,
            client_id=client_id,
            spec=spec,
            created_at=self.clock.wall(),
            sequence=next(self._sequence),
            trace_context=inject_current(),
        )
        await self.store.put(task)
        try:
            self.queue.put(task.task_id, spec.priority, task.sequence)
        except (QueueFull, QueueClosed) as exc:
            # Capacity was taken (or the server began stopping) while the store
            # wrote: undo, so an accepted task is never one nobody will run.
            await self.store.finish(self._shutdown_result(task, "not accepted"), task.created_at)
            await self.store.ack(client_id, (task.task_id,))
            self.counters.rejected += 1
            if isinstance(exc, QueueClosed):
                raise ShuttingDown("the server is shutting down and accepts no new tasks") from exc
            raise QueueFull(
                f"queue is full ({self.queue.capacity} tasks waiting); retry later"
            ) from exc
        self.counters.queued += 1
        self.hub.publish(
            ProgressEvent(task.task_id, client_id, ProgressKind.QUEUED, at=task.created_at)
        )
        return task, False

    async def get(self, client_id: str, task_id: str) -> Task:
        task = await self.store.get(task_id)
        if task is None or task.client_id != client_id:
            raise NotFound(f"task {task_id} not found")
        return task

    async def cancel(self, client_id: str, task_id: str) -> TaskState:
        """Cancels a queued or running task; a finished task keeps its state."""
        task = await self.get(client_id, task_id)
        if task.state.is_terminal:
            return task.state
        if self.queue.remove(task_id):
            await self._finish(task, self._cancelled_result(task, queue_time=None))
            return TaskState.CANCELLED
        if self.pool.cancel_task(task_id):
            if task_id in self._started:
                # Its handler records the CANCELLED result when the cancel lands.
                self._cancel_requested.add(task_id)
            else:
                # Cancelled before its handler took a first step: the handler
                # will never run, so the result is recorded here.
                await self._finish(task, self._cancelled_result(task, queue_time=None))
            return TaskState.CANCELLED
        # Between queue and worker (being handed over): the worker's
        # mark_running will see the terminal state and skip it.
        if await self._finish(task, self._cancelled_result(task, queue_time=None)):
            return TaskState.CANCELLED
        finished = await self.store.get(task_id)
        return finished.state if finished is not None else TaskState.CANCELLED

    async def ack(self, client_id: str, task_ids: Sequence[str]) -> None:
        await self.store.ack(client_id, task_ids)
        self.hub.acknowledged(client_id, task_ids)

    async def _process(self, task_id: str) -> None:
        """The worker's handler: run one task and record its result, whatever happens."""
        self._started.add(task_id)
        try:
            await self._run(task_id)
        finally:
            self._started.discard(task_id)
            self._cancel_requested.discard(task_id)

    async def _interrupted(self, task: Task, trace_id: str = "") -> None:
        """Records why a started task stopped short: a CancelTask, or the server stopping."""
        if task.task_id in self._cancel_requested:
            cancelled = self._cancelled_result(task, queue_time=None)
            await self._finish(task, replace(cancelled, trace_id=trace_id))
        elif self.store.durable:
            await self.store.requeue(task.task_id, crashed=False)
        else:
            interrupted = self._shutdown_result(task, "interrupted while running")
            await self._finish(task, replace(interrupted, trace_id=trace_id))

    async def _run(self, task_id: str) -> None:
        started_at = self.clock.wall()
        try:
            task = await self.store.mark_running(task_id, started_at)
        except asyncio.CancelledError:
            # Cancelled while the store wrote the start: the task may be RUNNING.
            found = await self.store.get(task_id)
            if found is not None and not found.state.is_terminal:
                await self._interrupted(found)
            if task_id not in self._cancel_requested:
                raise
            return
        if task is None:
            return  # cancelled or finished while it waited
        queue_time = max(0.0, started_at - task.created_at)
        self.queue_latency.add(queue_time)
        self.hub.publish(
            ProgressEvent(task_id, task.client_id, ProgressKind.STARTED, at=started_at, attempt=1)
        )
        # The task continues the trace it was queued in, even in another process.
        queued_in = extract(task.trace_context)
        self._tracer.start_span(
            "queue wait",
            context=queued_in,
            start_time=_nanos(task.created_at),
            attributes={"aiproc.task.id": task_id},
        ).end(end_time=_nanos(started_at))
        with self._tracer.start_as_current_span(
            "process task",
            context=queued_in,
            start_time=_nanos(started_at),
            attributes={
                "aiproc.task.id": task_id,
                "aiproc.task.priority": task.spec.priority.name.lower(),
                "url.full": task.spec.url,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            trace_id = _trace_id(span)
            try:
                result = await self.runner.run(task, queue_time)
            except asyncio.CancelledError:
                await self._interrupted(task, trace_id)
                if task_id not in self._cancel_requested:
                    raise  # the server is stopping
                return
            if result.error is not None:
                span.set_status(Status(StatusCode.ERROR, result.error.code.value))
                span.set_attribute("error.type", result.error.code.value)
            span.set_attribute("aiproc.task.attempts", result.attempts)
            self.processing_latency.add(result.processing_time)
            await self._finish(task, replace(result, trace_id=trace_id))

    async def _finish(self, task: Task, result: TaskResult) -> bool:
        if not await self.store.finish(result, self.clock.wall()):
            return False
        self.metrics.task_finished(
            outcome=result.state.value,
            error_code=result.error.code.value if result.error is not None else None,
            queue_wait=result.queue_time if task.started_at is not None else None,
            processing=result.processing_time if task.started_at is not None else None,
        )
        if result.state is TaskState.SUCCEEDED:
            self.counters.completed += 1
        elif result.state is TaskState.CANCELLED:
            self.counters.cancelled += 1
        else:
            self.counters.failed += 1
            if result.error is not None and result.error.code is ErrorCode.TIMEOUT:
                self.counters.timed_out += 1
        stored = (await self.store.get(task.task_id)) or task
        self.hub.publish(stored.result or result)
        return True

    def _cancelled_result(self, task: Task, queue_time: float | None) -> TaskResult:
        return self._terminal(
            task, TaskState.CANCELLED, ErrorCode.CANCELLED, "cancelled", queue_time
        )

    def _dead_letter(self, task: Task) -> TaskResult:
        message = (
            f"the server died {task.crashes + 1} times while running this task;"
            " it will not run again unless requeued"
        )
        return self._terminal(task, TaskState.FAILED, ErrorCode.CRASHED, message, None)

    async def requeue(self, client_id: str, task_id: str) -> TaskState:
        """Queues a finished task again, forgetting its result."""
        task = await self.get(client_id, task_id)
        if not task.state.is_terminal:
            raise FailedPrecondition(f"task {task_id} is {task.state.value}; only a finished task")
        if not self._accepting:
            raise ShuttingDown("the server is shutting down and accepts no new tasks")
        requeued = await self.store.requeue(task_id, crashed=False)
        if requeued is None:
            raise NotFound(f"task {task_id} not found")
        self.hub.acknowledged(client_id, (task_id,))
        self.queue.restore(task_id, requeued.spec.priority, requeued.sequence)
        self.counters.queued += 1
        return requeued.state

    async def list_tasks(self, client_id: str, state: TaskState | None, limit: int) -> list[Task]:
        return list(await self.store.list_tasks(client_id, state, limit))

    def _shutdown_result(self, task: Task, why: str) -> TaskResult:
        message = f"server shut down before the task finished ({why}); queue it again"
        return self._terminal(task, TaskState.FAILED, ErrorCode.SHUTDOWN, message, None)

    def _terminal(
        self, task: Task, state: TaskState, code: ErrorCode, message: str, queue_time: float | None
    ) -> TaskResult:
        now = self.clock.wall()
        if queue_time is None:
            queue_time = (task.started_at or now) - task.created_at
        return TaskResult(
            task_id=task.task_id,
            client_id=task.client_id,
            url=task.spec.url,
            state=state,
            error=TaskError(code, message),
            attempts=task.attempts,
            queue_time=max(0.0, queue_time),
            processing_time=max(0.0, now - task.started_at) if task.started_at else 0.0,
            completed_at=now,
            metadata=task.spec.metadata,
        )

    async def _expire_periodically(self) -> None:
        while True:
            await self.clock.sleep(EXPIRY_INTERVAL)
            expired = await self.store.expire(self.clock.wall())
            if expired:
                log.info("expired %d finished tasks past their retention", expired)

    def stats(self) -> ProcessorStats:
        now = self.clock.monotonic()
        return ProcessorStats(
            queue_size=len(self.queue),
            queue_capacity=self.queue.capacity,
            queue_depths={p: self.queue.depth(p) for p in sorted(Priority, reverse=True)},
            active_workers=self.pool.active,
            total_workers=self.pool.size,
            is_running=self._accepting,
            counters=replace(self.counters),
            queue_latency=self.queue_latency.summary(),
            processing_latency=self.processing_latency.summary(),
            providers=[slot.snapshot(now) for slot in self.failover.slots],
            event_counts={kind.value: n for kind, n in self.events.counts.items()},
            subscribers=len(self.hub),
            undelivered_results=self.store.undelivered_count(),
            started_at=self._started_at,
        )

    async def shutdown(self, grace: float) -> None:
        """Stops taking work, gives running tasks `grace` seconds, then ends everything.

        A durable store keeps queued tasks (and running ones cut short) queued
        for the next start. The in-memory store cannot keep them past the
        process, so they end FAILED with code SHUTDOWN (delivered to connected
        subscribers and logged) rather than vanishing.
        """
        if self._stopping:
            return
        self._stopping = True
        self._accepting = False
        waiting = self.queue.drain()
        self.pool.stop_taking()
        if self.store.durable:
            if waiting:
                log.info("shutdown: %d queued tasks stay queued for the next start", len(waiting))
        else:
            for task_id in waiting:
                task = await self.store.get(task_id)
                if task is not None:
                    await self._finish(task, self._shutdown_result(task, "still queued"))
            if waiting:
                log.warning(
                    "shutdown: %d queued tasks were not run; they ended with code SHUTDOWN",
                    len(waiting),
                )
        if not await self.pool.wait_idle(grace):
            log.warning(
                "shutdown: %d running tasks did not finish within %gs; cancelling them",
                self.pool.active,
                grace,
            )
        await self.pool.stop()
        if self.health_monitor is not None:
            await self.health_monitor.stop()
        self.events.close()
        if self._expiry is not None:
            self._expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._expiry
            self._expiry = None
        self.hub.close()

    def __repr__(self) -> str:
        return f"<Processor {self.queue!r} {self.pool!r} {self.hub!r}>"
