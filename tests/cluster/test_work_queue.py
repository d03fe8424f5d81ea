"""RedisWorkQueue against a real Redis (127.0.0.1:6379): replicas sharing one queue.

Each replica is what `cluster.backend` assembles: a RedisStore with its own
connection, a RedisWorkQueue over it and a RedisBus that wakes the queue when
a task becomes waiting anywhere. IDLE_POLL is an hour here, so a worker
waiting on an empty queue can only get a task through a wake message, never
through the dispatcher's slow look. Waits are bounded by PATIENCE; nothing
sleeps a fixed time.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Protocol, TypeVar

import pytest

from aiproc.server.cluster import work_queue
from aiproc.server.cluster.bus import RedisBus
from aiproc.server.cluster.store import Claimed, RedisStore
from aiproc.server.cluster.work_queue import RedisWorkQueue
from aiproc.server.config import QuotasConfig, TenantQuota
from aiproc.server.core.errors import QueueFull
from aiproc.server.core.models import (
    ErrorCode,
    Priority,
    ProgressEvent,
    Task,
    TaskError,
    TaskResult,
    TaskState,
)
from aiproc.server.core.queue import QueueClosed
from aiproc.server.resilience.rate_share import RateShares
from tests.redis_support import REDIS_URL
from tests.store.builders import result, task

RETENTION = 3600.0
LEASE_TTL = 1.0
"""The shortest lease the configuration allows (server.lease_ttl)."""
LONG_LEASE = 300.0
"""For a replica whose claims must not run out during a test: a lost id stays lost."""
PATIENCE = 10.0
"""Seconds a test waits for what should happen well within a couple of leases."""

T = TypeVar("T")


class Deaf:
    """A ReplicaListener for replicas that need the bus only for its wake-ups."""

    async def remote_result(self, task_id: str, client_id: str) -> None:
        pass

    def remote_progress(self, event: ProgressEvent) -> None:
        pass

    def remote_cancel(self, task_id: str) -> None:
        pass

    def remote_paused(self, provider: str, seconds: float) -> None:
        pass

    def remote_breaker(self, provider: str, opened: bool) -> None:
        pass

    def resync(self) -> None:
        pass


class Replica:
    """One replica's store and queue, watching what its dispatcher claims."""

    def __init__(self, store: RedisStore, queue: RedisWorkQueue) -> None:
        self.store = store
        self.queue = queue
        self.claims: list[list[str]] = []
        """What each of the dispatcher's claims returned, in order."""
        self.after_claim: Callable[[list[str]], None] | None = None
        """Called once, with the ids, when a claim next returns some (before the hand-over)."""
        self.dead: list[Task] = []
        """Tasks the queue dead-lettered, in order."""
        self.failing_dead_letters = 0
        """How many of the next dead-letter calls fail (raise) instead of recording the task."""
        self._claim = store.claim
        self._workers: list[asyncio.Task[str]] = []

    async def claim(
        self, n: int, lease_seconds: float, shares: RateShares | None = None
    ) -> Claimed:
        claimed = await self._claim(n, lease_seconds, shares)
        self.claims.append(claimed.ids)
        if claimed.ids and self.after_claim is not None:
            hook, self.after_claim = self.after_claim, None
            hook(claimed.ids)
        return claimed

    async def dead_letter(self, task: Task) -> None:
        """Records the task as the processor does: failed, code CRASHED."""
        self.dead.append(task)
        if self.failing_dead_letters:
            self.failing_dead_letters -= 1
            raise RuntimeError("dead letter failed")
        crashed = TaskResult(
            task_id=task.task_id,
            client_id=task.client_id,
            url=task.spec.url,
            state=TaskState.FAILED,
            error=TaskError(ErrorCode.CRASHED, "crashed too often"),
        )
        await self.store.finish(crashed, time.time())

    def worker(self) -> asyncio.Task[str]:
        """A worker waiting in get()."""
        getter = asyncio.create_task(self.queue.get())
        self._workers.append(getter)
        return getter

    async def idle_worker(self) -> asyncio.Task[str]:
        """A worker waiting in get() once the dispatcher has looked for a task for it and
        found none: from then on only a wake message brings it one."""
        looked = len(self.claims)
        getter = self.worker()
        await eventually(
            lambda: len(self.claims) > looked and not self.claims[-1],
            "the dispatcher looked at the queue and found nothing",
        )
        return getter

    async def stop(self) -> None:
        await self.queue.stop()
        for getter in self._workers:
            getter.cancel()  # none should be left waiting, but a bug must not hang the teardown
        await asyncio.gather(*self._workers, return_exceptions=True)


class OpenReplica(Protocol):
    async def __call__(
        self,
        *,
        capacity: int = 100,
        max_crashes: int = 3,
        lease_ttl: float = LEASE_TTL,
        shares: RateShares | None = None,
    ) -> Replica: ...


@pytest.fixture
async def open_replica(
    redis_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[OpenReplica]:
    """Starts replicas on the test's prefix; stops them after the test."""
    monkeypatch.setattr(work_queue, "IDLE_POLL", 3600.0)
    async with AsyncExitStack() as stack:

        async def open_(
            *,
            capacity: int = 100,
            max_crashes: int = 3,
            lease_ttl: float = LEASE_TTL,
            shares: RateShares | None = None,
        ) -> Replica:
            store = await RedisStore.open(REDIS_URL, redis_prefix, RETENTION)
            stack.push_async_callback(store.close)
            queue = RedisWorkQueue(
                store,
                capacity,
                max_crashes=max_crashes,
                lease_ttl=lease_ttl,
                idempotency_window=RETENTION,
                shares=shares,
            )
            replica = Replica(store, queue)
            monkeypatch.setattr(store, "claim", replica.claim)
            bus = RedisBus(store.client, store.keys, origin=store.origin, on_wake=queue.wake)
            await bus.start(Deaf())
            stack.push_async_callback(bus.stop)
            await queue.start(replica.dead_letter)
            stack.push_async_callback(replica.stop)
            return replica

        yield open_


@pytest.fixture
async def dying(redis_prefix: str) -> AsyncIterator[RedisStore]:
    """The store of a replica that claims tasks and then dies: it never renews, finishes or
    gives back what it claimed."""
    store = await RedisStore.open(REDIS_URL, redis_prefix, RETENTION)
    yield store
    await store.close()


async def eventually(check: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    """Polls `check` until it holds; fails the test if it still does not after PATIENCE."""
    deadline = time.monotonic() + PATIENCE
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"not within {PATIENCE}s: {what}")
        await asyncio.sleep(0.01)


async def outcome(waiting: asyncio.Task[T]) -> T:
    """What a task returns (or raises); fails the test if it is still running after PATIENCE."""
    done, _ = await asyncio.wait({waiting}, timeout=PATIENCE)
    if not done:
        pytest.fail(f"still waiting after {PATIENCE}s")
    return waiting.result()


async def lease_deadline(replica: Replica, task_id: str) -> float | None:
    """The task's lease deadline (ms of Redis TIME), None if nobody holds it."""
    score: float | None = await replica.store.client.zscore(replica.store.keys.leases, task_id)
    return score


async def stored(replica: Replica, task_id: str) -> Task:
    found = await replica.store.get(task_id)
    assert found is not None, f"task {task_id} is gone"
    return found


# -- Handing tasks out across replicas ---------------------------------------------------------


async def test_a_waiting_worker_is_woken_by_an_admit_on_another_replica(
    open_replica: OpenReplica,
) -> None:
    a, b = await open_replica(), await open_replica()
    getter = await a.idle_worker()

    admitted, created = await b.queue.admit(task("t1"))

    assert created
    assert admitted.sequence == 1
    assert await outcome(getter) == "t1"
    assert a.claims[-1] == ["t1"]


async def test_priority_order_holds_across_replicas(open_replica: OpenReplica) -> None:
    a, b = await open_replica(), await open_replica()
    for name, priority in [
        ("low", Priority.LOW),
        ("normal-1", Priority.NORMAL),
        ("high", Priority.HIGH),
        ("critical", Priority.CRITICAL),
        ("normal-2", Priority.NORMAL),
    ]:
        await b.queue.admit(task(name, priority=priority))

    order = [await outcome(a.worker()) for _ in range(5)]

    assert order == ["critical", "high", "normal-1", "normal-2", "low"]


async def test_admit_beyond_the_shared_capacity_raises_queue_full(
    open_replica: OpenReplica,
) -> None:
    a, b = await open_replica(capacity=2), await open_replica(capacity=2)
    await a.queue.admit(task("t1"))
    await b.queue.admit(task("t2"))

    with pytest.raises(QueueFull):
        await b.queue.admit(task("t3"))
    with pytest.raises(QueueFull):
        await a.queue.admit(task("t3"))
    assert await a.store.get("t3") is None

    # A claimed task no longer waits: there is room for one more.
    assert await outcome(a.worker()) == "t1"
    admitted, created = await b.queue.admit(task("t3"))
    assert created
    assert admitted.task_id == "t3"


async def test_a_closed_queue_refuses_admit_and_get(open_replica: OpenReplica) -> None:
    a, b = await open_replica(), await open_replica()
    a.queue.close()

    with pytest.raises(QueueClosed):
        await a.queue.admit(task("t1"))
    with pytest.raises(QueueClosed):
        await a.queue.get()
    assert await a.store.get("t1") is None

    # The shared queue itself is open: the other replica still takes and hands out work.
    await b.queue.admit(task("t1"))
    assert await outcome(b.worker()) == "t1"


async def test_close_wakes_waiting_workers_with_queue_closed(open_replica: OpenReplica) -> None:
    a, b = await open_replica(), await open_replica()
    second = a.worker()
    first = await a.idle_worker()

    a.queue.close()

    for getter in (first, second):
        with pytest.raises(QueueClosed):
            await outcome(getter)
    # A task queued now goes to a replica still taking work.
    await b.queue.admit(task("t1"))
    assert await outcome(b.worker()) == "t1"


# -- A tenant over its share of the rate limit holds no worker --------------------------------


def shares_of_a(share: float, rate: float) -> RateShares:
    """Tenant a may start `share` of `rate` tasks a second (burst 1); others are uncapped."""
    return RateShares(QuotasConfig(tenants=(TenantQuota("a", rate_share=share),)), rate, 1)


async def test_a_worker_gets_a_held_back_tenants_task_when_its_time_comes(
    open_replica: OpenReplica,
) -> None:
    a = await open_replica(shares=shares_of_a(0.5, rate=10.0))  # one start every 200 ms
    await a.queue.admit(task("a1", "a"))
    await a.queue.admit(task("a2", "a"))
    assert await outcome(a.worker()) == "a1"

    # No wake message comes and IDLE_POLL is an hour: only the dispatcher's own timer,
    # set from what the claim said, brings a2 to this worker.
    assert await outcome(a.worker()) == "a2"
    assert [] in a.claims  # it looked once too early, and waited


async def test_a_worker_waiting_on_a_held_back_tenant_takes_another_tenants_new_task(
    open_replica: OpenReplica,
) -> None:
    slow_a = shares_of_a(0.01, rate=1.0)  # one start every 100 s
    a, b = await open_replica(shares=slow_a), await open_replica(shares=slow_a)
    await a.queue.admit(task("a1", "a"))
    await a.queue.admit(task("a2", "a"))
    assert await outcome(a.worker()) == "a1"
    getter = await a.idle_worker()

    await b.queue.admit(task("b1", "b"))

    assert await outcome(getter) == "b1"
    assert await a.store.is_waiting("a2")


# -- A worker that goes away loses no task ------------------------------------------------------


async def test_a_worker_cancelled_while_waiting_loses_no_task(open_replica: OpenReplica) -> None:
    a, b = await open_replica(lease_ttl=LONG_LEASE), await open_replica()
    getter = await a.idle_worker()
    getter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await outcome(getter)

    await b.queue.admit(task("t1"))

    assert await outcome(b.worker()) == "t1"


async def test_a_worker_cancelled_as_its_task_is_claimed_loses_no_task(
    open_replica: OpenReplica,
) -> None:
    # A's claims last longer than the test: only an explicit unclaim brings the id back.
    a, b = await open_replica(lease_ttl=LONG_LEASE), await open_replica()
    getter = await a.idle_worker()

    def cancel_worker(ids: list[str]) -> None:
        getter.cancel()  # after the claim, before the hand-over

    a.after_claim = cancel_worker

    await b.queue.admit(task("t1"))

    with pytest.raises(asyncio.CancelledError):
        await outcome(getter)
    assert a.claims[-1] == ["t1"]
    assert await outcome(b.worker()) == "t1"
    back = await stored(b, "t1")
    assert (back.state, back.crashes) == (TaskState.QUEUED, 0)


async def test_a_worker_cancelled_as_it_is_handed_its_task_loses_no_task(
    open_replica: OpenReplica,
) -> None:
    a, b = await open_replica(lease_ttl=LONG_LEASE), await open_replica()
    getter = await a.idle_worker()

    def cancel_worker_soon(ids: list[str]) -> None:
        # Scheduled now, it runs once the id is the worker's result but before the worker
        # resumes: get() must put the id back.
        asyncio.get_running_loop().call_soon(getter.cancel)

    a.after_claim = cancel_worker_soon

    await b.queue.admit(task("t1"))

    with pytest.raises(asyncio.CancelledError):
        await outcome(getter)
    assert a.claims[-1] == ["t1"]
    assert await outcome(b.worker()) == "t1"


# -- Leases: reclaimed from dead replicas, renewed by live ones --------------------------------


@pytest.mark.parametrize("started", [False, True], ids=["claimed", "running"])
async def test_a_dead_replicas_task_goes_to_a_worker_elsewhere_when_its_lease_runs_out(
    open_replica: OpenReplica, dying: RedisStore, started: bool
) -> None:
    a = await open_replica()
    await dying.admit(task("t1"), 100)
    assert (await dying.claim(1, LEASE_TTL)).ids == ["t1"]
    if started:
        assert await dying.mark_running("t1", time.time()) is not None

    assert await outcome(a.worker()) == "t1"

    back = await stored(a, "t1")
    assert back.state is TaskState.QUEUED
    assert back.crashes == (1 if started else 0), "a crash counts only if it was running"


async def test_a_task_running_during_max_crashes_is_dead_lettered(
    open_replica: OpenReplica, dying: RedisStore
) -> None:
    a = await open_replica(max_crashes=2)
    await dying.admit(task("t1"), 100)
    for crashes in range(2):
        await eventually(lambda: dying.is_waiting("t1"), "t1 waits again")
        assert (await stored(a, "t1")).crashes == crashes
        assert (await dying.claim(1, LEASE_TTL)).ids == ["t1"]
        assert await dying.mark_running("t1", time.time()) is not None

    await eventually(lambda: bool(a.dead), "t1 was dead-lettered")

    [dead] = a.dead
    assert (dead.task_id, dead.state, dead.crashes) == ("t1", TaskState.RUNNING, 1)
    finished = await stored(a, "t1")
    assert finished.state is TaskState.FAILED
    assert finished.result is not None
    assert finished.result.error is not None
    assert finished.result.error.code is ErrorCode.CRASHED
    assert not await a.store.is_waiting("t1")


async def test_a_dead_letter_that_fails_is_tried_again_when_its_lease_runs_out(
    open_replica: OpenReplica, dying: RedisStore
) -> None:
    a = await open_replica(max_crashes=1)
    a.failing_dead_letters = 1
    await dying.admit(task("t1"), 100)
    assert (await dying.claim(1, LEASE_TTL)).ids == ["t1"]
    assert await dying.mark_running("t1", time.time()) is not None

    await eventually(lambda: len(a.dead) == 2, "t1 was dead-lettered a second time")

    assert [dead.task_id for dead in a.dead] == ["t1", "t1"]
    assert (await stored(a, "t1")).state is TaskState.FAILED


async def test_the_lease_of_a_running_task_is_renewed(open_replica: OpenReplica) -> None:
    # A lease of 3 s (renewed every second) leaves room for a busy machine's delays.
    lease = 3.0
    a, b = await open_replica(lease_ttl=lease), await open_replica()
    await a.queue.admit(task("t1"))
    assert await outcome(a.worker()) == "t1"
    assert await a.store.mark_running("t1", time.time()) is not None
    rival = await b.idle_worker()
    first = await lease_deadline(a, "t1")
    assert first is not None

    async def held_past_its_first_lease() -> bool:
        # Each look: still A's, still running, never reclaimed.
        assert not rival.done(), "another replica got the running task"
        running = await stored(a, "t1")
        assert (running.state, running.crashes) == (TaskState.RUNNING, 0)
        deadline = await lease_deadline(a, "t1")
        assert deadline is not None, "the lease ended while the task ran"
        return deadline >= first + lease * 1000

    await eventually(held_past_its_first_lease, "the lease moved a whole lease time forward")

    a.queue.done("t1")
    assert await a.store.finish(result(await stored(a, "t1")), time.time())
    assert not rival.done()


async def test_give_back_queues_a_running_task_again(open_replica: OpenReplica) -> None:
    a, b = await open_replica(), await open_replica()
    await b.queue.admit(task("t1"))
    assert await outcome(a.worker()) == "t1"
    assert await a.store.mark_running("t1", time.time()) is not None
    rival = await b.idle_worker()

    await a.queue.give_back("t1")

    assert await outcome(rival) == "t1"
    back = await stored(b, "t1")
    assert (back.state, back.started_at, back.crashes) == (TaskState.QUEUED, None, 0)


# -- What a replica tells about the queue -----------------------------------------------------


async def test_depths_and_len_follow_the_shared_queue(
    open_replica: OpenReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(work_queue, "DEPTH_REFRESH", 0.01)
    a, b = await open_replica(), await open_replica()
    for name, priority in [
        ("n1", Priority.NORMAL),
        ("n2", Priority.NORMAL),
        ("h", Priority.HIGH),
        ("l", Priority.LOW),
        ("c", Priority.CRITICAL),
    ]:
        await b.queue.admit(task(name, priority=priority))
    everything = {"low": 1, "normal": 2, "high": 1, "critical": 1}

    await eventually(
        lambda: a.queue.depths() == everything and len(a.queue) == 5,
        f"A shows {everything}, not {a.queue.depths()}",
    )

    assert await outcome(b.worker()) == "c"
    await eventually(
        lambda: a.queue.depths() == {**everything, "critical": 0} and len(a.queue) == 4,
        f"A shows the critical task gone, not {a.queue.depths()}",
    )


async def test_the_undelivered_count_follows_other_replicas(
    open_replica: OpenReplica, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(work_queue, "DEPTH_REFRESH", 0.01)
    a, b = await open_replica(), await open_replica()
    await b.queue.admit(task("t1"))
    assert await outcome(b.worker()) == "t1"
    assert await b.store.finish(result(await stored(b, "t1")), time.time())

    await eventually(lambda: a.store.undelivered_count() == 1, "A counts B's result")
    assert await b.store.ack("alice", ["t1"]) == 1
    await eventually(lambda: a.store.undelivered_count() == 0, "A sees B's ack")


async def test_withdraw_is_true_only_for_a_waiting_task(open_replica: OpenReplica) -> None:
    a, b = await open_replica(), await open_replica()
    await b.queue.admit(task("waiting"))
    await b.queue.admit(task("claimed", priority=Priority.HIGH))
    assert await outcome(a.worker()) == "claimed"

    assert await a.queue.withdraw("waiting")
    assert await b.queue.withdraw("waiting"), "withdraw only looks: it still waits"
    assert not await b.queue.withdraw("claimed")
    assert await a.store.mark_running("claimed", time.time()) is not None
    assert not await b.queue.withdraw("claimed")
    assert await a.store.finish(result(await stored(a, "claimed")), time.time())
    assert not await b.queue.withdraw("claimed")
    assert not await a.queue.withdraw("unknown")


async def test_requeue_makes_a_finished_task_runnable_again(open_replica: OpenReplica) -> None:
    a, b = await open_replica(), await open_replica()
    await a.queue.admit(task("t1"))
    assert await outcome(a.worker()) == "t1"
    assert await a.store.mark_running("t1", time.time()) is not None
    assert await a.store.finish(result(await stored(a, "t1")), time.time())
    a.queue.done("t1")
    rival = await b.idle_worker()

    requeued = await a.queue.requeue("t1")

    assert requeued is not None
    assert (requeued.state, requeued.result) == (TaskState.QUEUED, None)
    assert await outcome(rival) == "t1"
    assert await a.queue.requeue("unknown") is None
