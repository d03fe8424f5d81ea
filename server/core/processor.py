"""The processor: accepts tasks, runs them on the worker pool, and hands results to the hub.

This is the one object the API layer talks to. It knows nothing of gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import uuid
from collections.abc import Sequence
from dataclasses import replace

from opentelemetry.metrics import NoOpMeter
from opentelemetry.trace import NoOpTracer, Span, Status, StatusCode

from aiproc.server.config import Config, ProviderConfig
from aiproc.server.core.backend import Backend
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
from aiproc.server.core.queue import QueueClosed
from aiproc.server.core.runner import TaskRunner
from aiproc.server.core.stats import Counters, LatencySummary, LatencyWindow, ProcessorStats
from aiproc.server.core.workers import WorkerPool
from aiproc.server.providers.base import Provider
from aiproc.server.resilience.clock import Clock, SystemClock
from aiproc.server.resilience.selection import Selector
from aiproc.server.telemetry.current_span import CurrentSpan
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
    """Owns the worker pool, the runner and the results hub over a backend's store and queue."""

    def __init__(
        self,
        config: Config,
        backend: Backend,
        providers: Sequence[tuple[Provider, ProviderConfig]],
        *,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.config = config.processor
        self._idempotency_window = config.server.idempotency_window
        self._quotas = config.quotas
        self.tenant_counters: dict[str, Counters] = {}
        """Each tenant's share of `counters` (the task outcomes and refusals only)."""
        self._tracer = telemetry.tracer if telemetry is not None else NoOpTracer()
        self.store = store = backend.store
        self.queue = backend.queue
        self.bus = backend.bus
        self.limiter = backend.limiter
        self.clock = clock or SystemClock()
        self.hub = ResultsHub(store)
        self.events = EventBus()
        self.counters = Counters()
        self.queue_latency = LatencyWindow()
        self.processing_latency = LatencyWindow()
        slots = build_slots(providers, config, clock=self.clock, events=self.events)
        self.failover = FailoverManager(
            slots,
            Selector(config.failover.strategy, rng or random.Random()),
            health_checks=config.health.enabled,
            clock=self.clock,
            events=self.events,
            signals=backend.bus,
        )
        self.metrics = Metrics(
            telemetry.meter if telemetry is not None else NoOpMeter("aiproc"),
            queue_depths=self.queue.depths,
            breaker_states=lambda: {slot.name: slot.breaker_gauge for slot in slots},
            histograms=telemetry.histograms if telemetry is not None else None,
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
            on_progress=self._publish,
            on_attempt=store.record_attempt,
            rng=rng,
            tracer=self._tracer,
            metrics=self.metrics,
            record_content=telemetry.record_content if telemetry is not None else False,
        )
        self.pool = WorkerPool(self.queue, self._process, self.config.num_workers)
        self._cancel_requested: set[str] = set()
        self._started: set[str] = set()
        """Tasks whose handler has taken its first step (so it will record their end)."""
        self._stopping = False
        self._accepting = False
        self._started_at = 0.0
        self._expiry: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Makes the unfinished tasks in the store runnable again, then starts the workers.

        A task that was running when its process died runs again
        (at-least-once), unless that has happened max_crashes times, when it is
        dead-lettered instead of crashing servers forever.
        """
        await self.bus.start(self)
        await self.queue.start(self._dead_letter_task)
        self._started_at = self.clock.wall()
        self._accepting = True
        self.pool.start()
        if self.health_monitor is not None:
            self.health_monitor.start()
        self._expiry = asyncio.create_task(self._expire_periodically(), name="aiproc-expiry")

    async def submit(self, client_id: str, spec: TaskSpec) -> tuple[Task, bool]:
        """Queues a task; returns it and whether it was an idempotent repeat."""
        if not self._accepting:
            self.count_rejected(client_id)
            raise ShuttingDown("the server is shutting down and accepts no new tasks")
        if spec.idempotency_key:
            earlier = await self.store.find_idempotent(client_id, spec.idempotency_key)
            window_start = self.clock.wall() - self._idempotency_window
            if earlier is not None and earlier.created_at >= window_start:
                return earlier, True
        task = Task(
            task_id=uuid.uuid4().hex,
            client_id=client_id,
            spec=spec,
            created_at=self.clock.wall(),
            trace_context=inject_current(),
        )
        try:
            task, created = await self.queue.admit(task, self._queued)
        except QueueFull:
            self.count_rejected(client_id)
            raise
        except QueueClosed as exc:
            self.count_rejected(client_id)
            raise ShuttingDown("the server is shutting down and accepts no new tasks") from exc
        if not created:
            return task, True  # another replica queued it with this key a moment ago
        return task, False

    def _queued(self, task: Task) -> None:
        """Counts a task the queue took, and publishes its QUEUED event before a worker can
        publish its STARTED one (it may start before the QueueTask's reply)."""
        self._tally(task.client_id, "queued")
        self._publish(
            ProgressEvent(task.task_id, task.client_id, ProgressKind.QUEUED, at=task.created_at)
        )

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
        if await self.queue.withdraw(task_id) and await self._finish(
            task, self._cancelled_result(task, queue_time=None)
        ):
            self._stop_everywhere(task_id)
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
        # Being handed to a worker (whose mark_running will see the terminal
        # state and skip it), or running on another replica (told to stop).
        if await self._finish(task, self._cancelled_result(task, queue_time=None)):
            self._stop_everywhere(task_id)
            return TaskState.CANCELLED
        finished = await self.store.get(task_id)
        return finished.state if finished is not None else TaskState.CANCELLED

    def _stop_everywhere(self, task_id: str) -> None:
        """Stops a task whose cancel was just recorded, wherever it runs.

        With a shared queue, a worker here or on another replica may have claimed and
        started it while the cancel was being recorded (after the look at the queue):
        its mark_running came first, so it would otherwise run a cancelled task to the end.
        """
        self.remote_cancel(task_id)  # a worker of this replica
        self.bus.cancel(task_id)  # the others'

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
            await self.queue.give_back(task.task_id)
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
        self._publish(
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
        with CurrentSpan(
            self._tracer.start_span(
                "process task",
                context=queued_in,
                start_time=_nanos(started_at),
                attributes={
                    "aiproc.task.id": task_id,
                    "aiproc.task.priority": task.spec.priority.name.lower(),
                    "url.full": task.spec.url,
                },
            )
        ) as span:
            trace_id = _trace_id(span)
            try:
                result = await self.runner.run(task, queue_time, trace_id)
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
            # Published without waiting for it to be durable: were it lost to a crash, the
            # task would run again (at-least-once), and nobody was promised otherwise.
            await self._finish(task, result, wait_durable=False)

    async def _finish(self, task: Task, result: TaskResult, *, wait_durable: bool = True) -> bool:
        kept = await self.store.finish(result, self.clock.wall(), wait_durable=wait_durable)
        if kept is None:
            return False
        self.metrics.task_finished(
            outcome=result.state.value,
            error_code=result.error.code.value if result.error is not None else None,
            queue_wait=result.queue_time if task.started_at is not None else None,
            processing=result.processing_time if task.started_at is not None else None,
        )
        if result.state is TaskState.SUCCEEDED:
            self._tally(task.client_id, "completed")
        elif result.state is TaskState.CANCELLED:
            self._tally(task.client_id, "cancelled")
        else:
            self._tally(task.client_id, "failed")
            if result.error is not None and result.error.code is ErrorCode.TIMEOUT:
                self._tally(task.client_id, "timed_out")
        self._publish(kept)
        return True

    def _publish(self, item: TaskResult | ProgressEvent) -> None:
        """To this replica's subscribers, and through the bus to the other replicas'."""
        self.hub.publish(item)
        if isinstance(item, TaskResult):
            self.bus.result_ready(item)
        else:
            self.bus.progress(item)

    async def remote_result(self, task_id: str, client_id: str) -> None:
        """Delivers a result another replica recorded to this replica's subscribers."""
        if not self.hub.wants(task_id, client_id):
            return
        task = await self.store.get(task_id)
        if task is not None and task.result is not None:
            self.hub.publish(task.result)

    def remote_progress(self, event: ProgressEvent) -> None:
        self.hub.publish(event)

    def remote_cancel(self, task_id: str) -> None:
        """Stops a task that another replica cancelled, if it runs here (its result, CANCELLED,
        is already recorded)."""
        if task_id in self._started:
            self._cancel_requested.add(task_id)
        self.pool.cancel_task(task_id)

    def remote_paused(self, provider: str, seconds: float) -> None:
        self.failover.remote_paused(provider, seconds)

    def remote_breaker(self, provider: str, opened: bool) -> None:
        self.failover.remote_breaker(provider, opened)

    def resync(self) -> None:
        self.hub.resync()

    async def _dead_letter_task(self, task: Task) -> None:
        await self._finish(task, self._dead_letter(task))

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
        requeued = await self.queue.requeue(task_id)
        if requeued is None:
            raise NotFound(f"task {task_id} not found")
        self.hub.acknowledged(client_id, (task_id,))
        self._tally(task.client_id, "queued")
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

    def count_rejected(self, tenant: str) -> None:
        """Counts a QueueTask of `tenant` that was refused (full, invalid, shutting down)."""
        self._tally(tenant, "rejected")

    def _tally(self, tenant: str, counter: str) -> None:
        """Adds one to `counter` of the totals and of `tenant`'s own."""
        own = self.tenant_counters.get(tenant)
        if own is None:
            own = self.tenant_counters[tenant] = Counters()
        setattr(self.counters, counter, getattr(self.counters, counter) + 1)
        setattr(own, counter, getattr(own, counter) + 1)

    async def tenant_stats(self, tenant: str) -> ProcessorStats:
        """What `tenant` may see of the server: its own waiting tasks, its quota, its
        counters; nothing of other tenants, the workers or the providers."""
        limit = self._quotas.max_queued(tenant)
        capacity = self.queue.capacity
        return ProcessorStats(
            queue_size=await self.queue.waiting_of(tenant),
            queue_capacity=min(limit, capacity) if limit else capacity,
            queue_depths={},
            active_workers=0,
            total_workers=0,
            is_running=self._accepting,
            counters=replace(self.tenant_counters.get(tenant) or Counters()),
            queue_latency=LatencySummary(),
            processing_latency=LatencySummary(),
            providers=[],
            event_counts={},
            subscribers=0,
            undelivered_results=0,
            started_at=self._started_at,
        )

    def stats(self) -> ProcessorStats:
        now = self.clock.monotonic()
        depths = self.queue.depths()
        return ProcessorStats(
            queue_size=len(self.queue),
            queue_capacity=self.queue.capacity,
            queue_depths={p: depths[p.name.lower()] for p in sorted(Priority, reverse=True)},
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
        waiting = [] if self.store.durable else await self.queue.drain()
        self.pool.stop_taking()
        if self.store.durable:
            log.info("shutdown: the %d queued tasks stay queued", len(self.queue))
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
        await self.queue.stop()
        await self.bus.stop()
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
