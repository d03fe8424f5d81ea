"""RedisStore's queue operations against a real Redis (127.0.0.1:6379).

The TaskStore behaviour is in tests/store/test_contract.py; here are the
operations replicas share the work with: admit, claim, leases and reclaim.
Leases that must run out are short (50 ms) and the tests poll for their end
with a deadline rather than sleeping a fixed time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.commands.core import AsyncScript

from aiproc.server.cluster import store as store_module
from aiproc.server.cluster.connection import open_redis
from aiproc.server.cluster.keys import RedisKeys
from aiproc.server.cluster.store import RedisStore
from aiproc.server.config import QuotasConfig, TenantQuota
from aiproc.server.core.errors import QueueFull, StoreError, TenantQueueFull
from aiproc.server.core.models import Priority, TaskState
from aiproc.server.resilience.rate_share import RateShares
from tests.redis_support import REDIS_URL
from tests.store.builders import result, task

RETENTION = 60.0
SHORT_LEASE = 0.05
LONG_LEASE = 30.0
MAX_CRASHES = 3
PATIENCE = 5.0
"""Seconds a test waits for something that should take milliseconds before it fails."""

Replica = Callable[[], Awaitable[RedisStore]]


@pytest.fixture
def prefix(redis_prefix: str) -> str:
    """The test's own key prefix (tests/redis_support.py deletes its keys after the test)."""
    return redis_prefix


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """A client for inspecting keys directly."""
    client = await open_redis(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def replica(prefix: str, redis: Redis) -> AsyncIterator[Replica]:
    """Opens RedisStores on the test's prefix, each with its own connection, as replicas
    would; closes them after the test."""
    async with AsyncExitStack() as stack:

        async def open_replica() -> RedisStore:
            store = await RedisStore.open(REDIS_URL, prefix, RETENTION)
            stack.push_async_callback(store.close)
            return store

        yield open_replica


@pytest.fixture
async def store(replica: Replica) -> RedisStore:
    return await replica()


async def server_time(store: RedisStore) -> float:
    """Redis's clock (seconds since the epoch): the one leases are measured by."""
    seconds, micros = await store.client.time()
    return int(seconds) + int(micros) / 1_000_000


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Polls `check` until it holds; fails the test if it still does not after PATIENCE."""
    deadline = time.monotonic() + PATIENCE
    while not await check():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {PATIENCE}s: {what}")
        await asyncio.sleep(0.005)


async def lease_of(redis: Redis, store: RedisStore, task_id: str) -> float | None:
    """The task's lease deadline (ms of Redis TIME), or None if it is not leased."""
    score: float | None = await redis.zscore(store.keys.leases, task_id)
    return score


# -- admit ---------------------------------------------------------------------------------


async def test_admit_numbers_tasks_in_order_and_queues_them(store: RedisStore) -> None:
    admitted = [await store.admit(task(f"t{n}", sequence=99), capacity=10) for n in range(3)]

    assert [(t.task_id, t.sequence, created) for t, created in admitted] == [
        ("t0", 1, True),
        ("t1", 2, True),
        ("t2", 3, True),
    ]
    stored = await store.get("t1")
    assert stored == admitted[1][0]
    assert stored is not None
    assert stored.state is TaskState.QUEUED
    assert [await store.is_waiting(f"t{n}") for n in range(3)] == [True, True, True]
    assert await store.last_sequence() == 3


async def test_admit_refuses_at_capacity_counting_only_waiting_tasks(store: RedisStore) -> None:
    await store.admit(task("t1"), capacity=2)
    await store.admit(task("t2"), capacity=2)

    with pytest.raises(QueueFull, match=r"queue is full \(2 tasks waiting\); retry later"):
        await store.admit(task("t3"), capacity=2)

    assert await store.get("t3") is None
    assert (await store.claim(1, LONG_LEASE)).ids == ["t1"]  # claimed: no longer waiting
    new, created = await store.admit(task("t3"), capacity=2)
    assert (new.task_id, new.sequence, created) == ("t3", 3, True)


async def test_a_repeated_idempotency_key_returns_the_original_task(store: RedisStore) -> None:
    original, _ = await store.admit(task("t1", "alice", key="k"), capacity=10)

    again, created = await store.admit(task("t2", "alice", key="k"), capacity=10)
    # The repeat is answered before the capacity check: it asks for no room.
    full, created_when_full = await store.admit(task("t3", "alice", key="k"), capacity=0)
    other, created_for_bob = await store.admit(task("t4", "bob", key="k"), capacity=10)

    assert (again, created) == (original, False)
    assert (full, created_when_full) == (original, False)
    assert (other.task_id, created_for_bob) == ("t4", True)
    assert await store.get("t2") is None
    assert await store.get("t3") is None
    assert not await store.is_waiting("t2")
    assert await store.find_idempotent("alice", "k") == original


async def test_an_idempotency_key_older_than_not_before_makes_a_new_task(
    store: RedisStore,
) -> None:
    original, _ = await store.admit(task("t1", key="k"), capacity=10)  # created_at 1000.0

    kept, kept_created = await store.admit(task("t2", key="k"), 10, not_before=1000.0)
    new, created = await store.admit(task("t3", key="k"), 10, not_before=1000.5)

    assert (kept.task_id, kept_created) == ("t1", False)
    assert (new.task_id, created) == ("t3", True)
    found = await store.find_idempotent("alice", "k")
    assert found is not None
    assert found.task_id == "t3"
    assert await store.get("t1") == original  # the old task stays, only the key moved


async def test_concurrent_admits_with_one_key_make_one_task(replica: Replica) -> None:
    replicas = [await replica(), await replica()]

    outcomes = await asyncio.gather(
        *(replicas[n % 2].admit(task(f"t{n}", key="same"), capacity=100) for n in range(20))
    )

    assert sum(created for _, created in outcomes) == 1
    assert len({admitted.task_id for admitted, _ in outcomes}) == 1
    assert len(await replicas[0].list_tasks(None, None, 100)) == 1
    assert await replicas[1].waiting() == {
        Priority.LOW: 0,
        Priority.NORMAL: 1,
        Priority.HIGH: 0,
        Priority.CRITICAL: 0,
    }


async def test_admit_publishes_a_wake(store: RedisStore, redis: Redis) -> None:
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(store.keys.wake)
        await wait_for_message(pubsub, "subscribe")

        await store.admit(task("t1"), capacity=10)

        message = await wait_for_message(pubsub, "message")
        assert (message["channel"], message["data"]) == (store.keys.wake, "1")
    finally:
        await pubsub.aclose()


async def wait_for_message(pubsub: PubSub, kind: str) -> dict[str, Any]:
    """The next pub/sub message of this kind ("subscribe", "message"), waiting at most
    PATIENCE."""
    deadline = time.monotonic() + PATIENCE
    while (left := deadline - time.monotonic()) > 0:
        message = await pubsub.get_message(timeout=left)
        if message is not None and message["type"] == kind:
            return dict(message)
    pytest.fail(f"no {kind} message within {PATIENCE}s")


# -- claim, unclaim, give_back -------------------------------------------------------------


async def test_claim_takes_highest_priority_first_then_oldest_across_replicas(
    replica: Replica, redis: Redis
) -> None:
    first, second = await replica(), await replica()
    order = [
        ("low", Priority.LOW),
        ("normal-1", Priority.NORMAL),
        ("critical", Priority.CRITICAL),
        ("normal-2", Priority.NORMAL),
        ("high", Priority.HIGH),
        ("normal-3", Priority.NORMAL),
    ]
    for task_id, priority in order:
        await first.admit(task(task_id, priority=priority), capacity=10)

    claimed = (await first.claim(2, LONG_LEASE)).ids
    claimed += (await second.claim(2, LONG_LEASE)).ids
    claimed += (await first.claim(10, LONG_LEASE)).ids

    assert claimed == ["critical", "high", "normal-1", "normal-2", "normal-3", "low"]
    assert (await second.claim(10, LONG_LEASE)).ids == []
    assert not await first.is_waiting("low")
    now_ms = await server_time(first) * 1000
    for task_id in claimed:
        deadline = await lease_of(redis, first, task_id)
        assert deadline is not None
        assert now_ms < deadline <= now_ms + LONG_LEASE * 1000


async def test_tenants_take_turns_within_a_level_across_replicas(replica: Replica) -> None:
    first, second = await replica(), await replica()
    for n in range(1, 6):
        await first.admit(task(f"a{n}", "a"), capacity=20)
    await second.admit(task("b1", "b"), capacity=20)
    await second.admit(task("b2", "b"), capacity=20)
    await first.admit(task("c1", "c"), capacity=20)

    rounds = [
        set((await first.claim(3, LONG_LEASE)).ids),
        set((await second.claim(2, LONG_LEASE)).ids),
    ]
    rest = (await first.claim(10, LONG_LEASE)).ids

    assert rounds == [{"a1", "b1", "c1"}, {"a2", "b2"}]
    assert rest == ["a3", "a4", "a5"]


async def test_a_newcomer_waits_behind_at_most_one_task_of_a_backlog(store: RedisStore) -> None:
    for n in range(1, 11):
        await store.admit(task(f"a{n:02}", "a"), capacity=20)
    assert (await store.claim(3, LONG_LEASE)).ids == ["a01", "a02", "a03"]

    await store.admit(task("b1", "b"), capacity=20)

    assert set((await store.claim(2, LONG_LEASE)).ids) == {"a04", "b1"}


async def test_a_tenant_at_its_limit_is_refused_and_others_are_not(store: RedisStore) -> None:
    await store.admit(task("a1", "a"), capacity=10, tenant_limit=2)
    await store.admit(task("a2", "a"), capacity=10, tenant_limit=2)

    with pytest.raises(TenantQueueFull, match="tenant 'a' has 2 tasks waiting"):
        await store.admit(task("a3", "a"), capacity=10, tenant_limit=2)
    await store.admit(task("b1", "b"), capacity=10, tenant_limit=2)
    assert (await store.claim(1, LONG_LEASE)).ids == ["a1"]
    await store.admit(task("a3", "a"), capacity=10, tenant_limit=2)
    assert await store.get("a3") is not None


async def assert_queue_bookkeeping_agrees(redis: Redis, keys: RedisKeys) -> None:
    """Each tenant's waiting count, lane and head agree with P:queue itself."""
    waiting = await redis.zrange(keys.queue, 0, -1, withscores=True)
    lanes: dict[str, list[tuple[str, float]]] = {}
    for task_id, score in waiting:
        client = await redis.hget(keys.task(task_id), "client")
        lanes.setdefault(client, []).append((task_id, score))
    assert await redis.hgetall(keys.tenant_waiting) == {c: str(len(t)) for c, t in lanes.items()}
    assert dict(await redis.zrange(keys.heads, 0, -1, withscores=True)) == {
        client: tasks[0][1] for client, tasks in lanes.items()
    }
    for client, tasks in lanes.items():
        assert await redis.zrange(keys.lane(client), 0, -1, withscores=True) == tasks


async def test_waiting_counts_per_tenant_follow_every_way_in_and_out_of_the_queue(
    store: RedisStore, redis: Redis
) -> None:
    keys = RedisKeys(store.keys.prefix)
    for name in ("a1", "a2", "a3", "b1", "b2"):
        await store.admit(task(name, name[0]), capacity=10)
    claimed = (await store.claim(2, LONG_LEASE)).ids  # a1 and b1
    await store.unclaim(claimed[0])
    await store.mark_running(claimed[1], 1001.0)
    await store.give_back(claimed[1])
    await store.finish(result(task("a2", "a"), TaskState.CANCELLED), finished_at=1002.0)
    (taken,) = (await store.claim(1, LONG_LEASE)).ids
    await store.mark_running(taken, 1003.0)
    await store.finish(result(task(taken, taken[0])), finished_at=1004.0)
    await store.requeue(taken, crashed=False)
    await store.expire(now=1002.0 + RETENTION)

    await assert_queue_bookkeeping_agrees(redis, keys)
    assert sorted(await redis.zrange(keys.queue, 0, -1)) == ["a1", "a3", "b1", "b2"]

    assert len((await store.claim(10, LONG_LEASE)).ids) == 4
    assert await redis.hgetall(keys.tenant_waiting) == {}
    assert await redis.hgetall(keys.last_tag) == {}
    assert await redis.exists(keys.heads, keys.lane("a"), keys.lane("b")) == 0


# -- a tenant's share of the rate limit ----------------------------------------------------


def shares_of_a(share: float, rate: float, burst: int = 1) -> RateShares:
    """Tenant a may start `share` of `rate` tasks a second; every other tenant is uncapped."""
    return RateShares(QuotasConfig(tenants=(TenantQuota("a", rate_share=share),)), rate, burst)


SLOW_A = shares_of_a(0.01, rate=1.0)
"""a may start one task every 100 seconds: longer than any test."""


async def test_claim_passes_over_a_tenant_over_its_share_and_takes_the_next(
    store: RedisStore, redis: Redis
) -> None:
    for name in ("a1", "a2", "a3", "a4", "a5", "b1", "b2", "c1"):
        await store.admit(task(name, name[0]), capacity=20)

    claimed = await store.claim(10, LONG_LEASE, SLOW_A)

    # a's one start, then everyone else's tasks in turn, passing over a's backlog.
    assert claimed.ids == ["a1", "b1", "c1", "b2"]
    assert claimed.held_back_for is not None
    assert 99.0 < claimed.held_back_for <= 100.0
    keys = store.keys
    await assert_queue_bookkeeping_agrees(redis, keys)
    assert await redis.hgetall(keys.tenant_waiting) == {"a": "4"}
    assert await redis.hget(keys.virtual_time, str(int(Priority.NORMAL))) == "2"

    nothing = await store.claim(10, LONG_LEASE, SLOW_A)
    assert nothing.ids == []
    assert nothing.held_back_for is not None
    await store.admit(task("b3", "b"), capacity=20)
    assert (await store.claim(10, LONG_LEASE, SLOW_A)).ids == ["b3"]
    # Without the shares nothing is held back: a's tasks come in their order.
    assert (await store.claim(10, LONG_LEASE)).ids == ["a2", "a3", "a4", "a5"]
    await assert_queue_bookkeeping_agrees(redis, keys)
    assert await redis.hgetall(keys.tenant_waiting) == {}


async def test_a_held_back_tenants_urgent_tasks_do_not_block_others_lower_ones(
    store: RedisStore,
) -> None:
    for name in ("a1", "a2"):
        await store.admit(task(name, "a", priority=Priority.CRITICAL), capacity=20)
    await store.admit(task("b1", "b", priority=Priority.LOW), capacity=20)

    assert (await store.claim(10, LONG_LEASE, SLOW_A)).ids == ["a1", "b1"]


async def test_replicas_share_one_budget_per_tenant(replica: Replica, redis: Redis) -> None:
    first, second = await replica(), await replica()
    shares = shares_of_a(0.5, rate=0.02, burst=4)  # one per 100 s, a burst of 2
    for n in range(1, 6):
        await first.admit(task(f"a{n}", "a"), capacity=20)
    await first.admit(task("b1", "b"), capacity=20)

    taken = [(await first.claim(1, LONG_LEASE, shares)).ids]
    taken.append((await second.claim(1, LONG_LEASE, shares)).ids)
    taken.append((await first.claim(5, LONG_LEASE, shares)).ids)
    taken.append((await second.claim(5, LONG_LEASE, shares)).ids)

    # a's burst of two, one start on each replica, and then neither starts a third.
    assert taken == [["a1"], ["b1"], ["a2"], []]
    assert await redis.exists(first.keys.share("a")) == 1
    assert await redis.exists(first.keys.share("b")) == 0  # uncapped: nothing to keep


async def test_a_held_back_tenant_is_claimed_again_once_its_time_comes(
    store: RedisStore,
) -> None:
    shares = shares_of_a(0.5, rate=10.0)  # 5 a second: one every 200 ms
    for name in ("a1", "a2"):
        await store.admit(task(name, "a"), capacity=20)
    assert (await store.claim(5, LONG_LEASE, shares)).ids == ["a1"]
    held = await store.claim(5, LONG_LEASE, shares)
    assert held.ids == []
    assert held.held_back_for is not None
    assert 0 < held.held_back_for <= 0.2

    async def a2_claimed() -> bool:
        return (await store.claim(5, LONG_LEASE, shares)).ids == ["a2"]

    await eventually(a2_claimed, "a's next task was claimed once its time came")


async def test_a_cancelled_task_is_not_handed_out_nor_run(store: RedisStore, redis: Redis) -> None:
    for n in (1, 2, 3):
        await store.admit(task(f"t{n}"), capacity=10)
    await store.finish(result(task("t1"), TaskState.CANCELLED), finished_at=1001.0)
    claimed = (await store.claim(1, LONG_LEASE)).ids
    assert claimed == ["t2"]
    # Cancelled after its claim, before a worker starts it.
    await store.finish(result(task("t2"), TaskState.CANCELLED), finished_at=1002.0)

    assert await store.mark_running("t2", started_at=1003.0) is None

    assert await lease_of(redis, store, "t2") is None
    assert (await store.claim(10, LONG_LEASE)).ids == ["t3"]
    cancelled = await store.get("t2")
    assert cancelled is not None
    assert (cancelled.state, cancelled.started_at) == (TaskState.CANCELLED, None)


async def test_mark_running_refusal_removes_the_lease(store: RedisStore, redis: Redis) -> None:
    await store.admit(task("t1"), capacity=10)
    await store.claim(1, LONG_LEASE)
    assert await store.mark_running("t1", 1001.0) is not None
    assert await lease_of(redis, store, "t1") is not None  # a running task stays leased

    assert await store.mark_running("t1", 1002.0) is None

    assert await lease_of(redis, store, "t1") is None


async def test_unclaim_puts_a_task_back_in_its_place(store: RedisStore, redis: Redis) -> None:
    for n in (1, 2, 3):
        await store.admit(task(f"t{n}"), capacity=10)
    assert (await store.claim(1, LONG_LEASE)).ids == ["t1"]

    await store.unclaim("t1")

    assert await lease_of(redis, store, "t1") is None
    assert await store.is_waiting("t1")
    assert (await store.claim(10, LONG_LEASE)).ids == ["t1", "t2", "t3"]


async def test_unclaim_leaves_a_cancelled_task_finished(store: RedisStore) -> None:
    await store.admit(task("t1"), capacity=10)
    await store.claim(1, LONG_LEASE)
    await store.finish(result(task("t1"), TaskState.CANCELLED), finished_at=1001.0)

    await store.unclaim("t1")

    assert not await store.is_waiting("t1")
    cancelled = await store.get("t1")
    assert cancelled is not None
    assert cancelled.state is TaskState.CANCELLED


async def test_give_back_requeues_a_running_task_without_a_crash(
    store: RedisStore, redis: Redis
) -> None:
    await store.admit(task("t1"), capacity=10)
    await store.admit(task("t2"), capacity=10)
    await store.claim(1, LONG_LEASE)
    await store.mark_running("t1", 1001.0)

    given = await store.give_back("t1")
    again = await store.give_back("t1")

    assert (given, again) == (True, False)
    back = await store.get("t1")
    assert back is not None
    assert (back.state, back.started_at, back.crashes) == (TaskState.QUEUED, None, 0)
    assert await lease_of(redis, store, "t1") is None
    assert (await store.claim(10, LONG_LEASE)).ids == ["t1", "t2"]
    assert not await store.give_back("unknown")


async def test_renew_extends_held_leases_only(store: RedisStore, redis: Redis) -> None:
    for n in (1, 2):
        await store.admit(task(f"t{n}"), capacity=10)
    await store.claim(1, SHORT_LEASE)

    await store.renew(["t1", "t2", "unknown"], LONG_LEASE)

    deadline = await lease_of(redis, store, "t1")
    assert deadline is not None
    assert deadline > (await server_time(store) + LONG_LEASE / 2) * 1000
    assert await lease_of(redis, store, "t2") is None  # waiting, not claimed: no lease
    assert await lease_of(redis, store, "unknown") is None


# -- reclaim -------------------------------------------------------------------------------


async def test_reclaim_leaves_live_leases_alone(store: RedisStore, redis: Redis) -> None:
    await store.admit(task("t1"), capacity=10)
    await store.claim(1, LONG_LEASE)
    await store.mark_running("t1", 1001.0)

    assert await store.reclaim(MAX_CRASHES, LONG_LEASE) == []

    running = await store.get("t1")
    assert running is not None
    assert (running.state, running.crashes) == (TaskState.RUNNING, 0)
    assert await lease_of(redis, store, "t1") is not None


async def test_reclaim_requeues_a_running_task_counting_a_crash(
    store: RedisStore, redis: Redis
) -> None:
    await store.admit(task("t1"), capacity=10)
    await store.claim(1, SHORT_LEASE)
    await store.mark_running("t1", 1001.0)

    async def reclaimed() -> bool:
        assert await store.reclaim(MAX_CRASHES, LONG_LEASE) == []
        return await store.is_waiting("t1")

    await eventually(reclaimed, "the expired lease is reclaimed")

    requeued = await store.get("t1")
    assert requeued is not None
    assert (requeued.state, requeued.started_at, requeued.crashes) == (TaskState.QUEUED, None, 1)
    assert await lease_of(redis, store, "t1") is None


async def test_reclaim_requeues_a_claimed_task_never_started_without_a_crash(
    store: RedisStore,
) -> None:
    await store.admit(task("t1"), capacity=10)
    await store.admit(task("t2"), capacity=10)
    await store.claim(1, SHORT_LEASE)

    async def reclaimed() -> bool:
        assert await store.reclaim(MAX_CRASHES, LONG_LEASE) == []
        return await store.is_waiting("t1")

    await eventually(reclaimed, "the expired claim is reclaimed")

    requeued = await store.get("t1")
    assert requeued is not None
    assert (requeued.state, requeued.crashes) == (TaskState.QUEUED, 0)
    assert (await store.claim(10, LONG_LEASE)).ids == ["t1", "t2"]  # back in its place


async def test_reclaim_dead_letters_at_max_crashes(store: RedisStore, redis: Redis) -> None:
    await store.admit(task("t1"), capacity=10)
    await store.claim(1, SHORT_LEASE)
    await store.mark_running("t1", 1001.0)

    async def requeued() -> bool:
        assert await store.reclaim(2, LONG_LEASE) == []
        return await store.is_waiting("t1")

    await eventually(requeued, "the first crash requeues the task")
    assert (await store.claim(1, SHORT_LEASE)).ids == ["t1"]
    await store.mark_running("t1", 1002.0)

    dead = []

    async def dead_lettered() -> bool:
        dead.extend(await store.reclaim(2, LONG_LEASE))
        return bool(dead)

    await eventually(dead_lettered, "the second crash dead-letters the task")

    assert [(t.task_id, t.state, t.crashes) for t in dead] == [("t1", TaskState.RUNNING, 1)]
    assert not await store.is_waiting("t1")
    deadline = await lease_of(redis, store, "t1")
    assert deadline is not None  # re-leased to the caller, who records the failure
    assert deadline > (await server_time(store) + LONG_LEASE / 2) * 1000
    assert await store.reclaim(2, LONG_LEASE) == []
    assert await store.finish(result(dead[0], TaskState.FAILED), finished_at=1003.0)
    assert await lease_of(redis, store, "t1") is None


async def test_reclaim_ignores_finished_and_unknown_tasks(store: RedisStore, redis: Redis) -> None:
    await store.admit(task("t1"), capacity=10)
    await store.claim(1, LONG_LEASE)
    await store.mark_running("t1", 1001.0)
    await store.finish(result(task("t1")), finished_at=1002.0)
    # Leases left behind, long expired (finish removes a task's lease; this is belt and braces).
    await redis.zadd(store.keys.leases, {"t1": 0, "unknown": 0})

    assert await store.reclaim(MAX_CRASHES, LONG_LEASE) == []

    finished = await store.get("t1")
    assert finished is not None
    assert (finished.state, finished.crashes) == (TaskState.SUCCEEDED, 0)
    assert not await store.is_waiting("t1")
    assert not await store.is_waiting("unknown")
    assert await redis.zcard(store.keys.leases) == 0


async def test_reclaim_publishes_a_wake(store: RedisStore, redis: Redis) -> None:
    await store.admit(task("t1"), capacity=10)
    await store.claim(1, SHORT_LEASE)
    pubsub = redis.pubsub()
    try:
        await pubsub.subscribe(store.keys.wake)
        await wait_for_message(pubsub, "subscribe")

        async def reclaimed() -> bool:
            await store.reclaim(MAX_CRASHES, LONG_LEASE)
            return await store.is_waiting("t1")

        await eventually(reclaimed, "the expired claim is reclaimed")

        message = await wait_for_message(pubsub, "message")
        assert message["data"] == "1"
    finally:
        await pubsub.aclose()


# -- keys ----------------------------------------------------------------------------------


async def test_the_scripts_use_the_key_names_of_redis_keys(
    store: RedisStore, redis: Redis, prefix: str
) -> None:
    keys = RedisKeys(prefix)
    await store.admit(task("t1", "alice:x", key="k"), capacity=10)
    waiting = {key async for key in redis.scan_iter(match=f"{prefix}:*")}
    await store.claim(1, LONG_LEASE)
    await store.mark_running("t1", 1001.0)
    await store.finish(result(task("t1", "alice:x")), finished_at=1002.0)

    found = {key async for key in redis.scan_iter(match=f"{prefix}:*")}

    assert {
        keys.queue,
        keys.tenant_waiting,
        keys.last_tag,
        keys.heads,
        keys.lane("alice:x"),
    } <= waiting
    assert found == {
        keys.task("t1"),
        keys.tasks,
        keys.client_tasks("alice:x"),
        keys.pending("alice:x"),
        keys.finished,
        keys.idempotency("alice:x", "k"),
        keys.seq,
        keys.done,
        keys.undelivered,
        keys.virtual_time,
    }


async def test_expire_removes_every_trace_of_a_task(
    store: RedisStore, redis: Redis, prefix: str
) -> None:
    keys = RedisKeys(prefix)
    await store.admit(task("t1", key="k"), capacity=10)
    await store.claim(1, LONG_LEASE)
    await store.mark_running("t1", 1001.0)
    await store.finish(result(task("t1")), finished_at=2000.0)
    assert store.undelivered_count() == 1

    assert await store.expire(now=2000.0 + RETENTION) == 1

    left = {key async for key in redis.scan_iter(match=f"{prefix}:*")}
    # Counters only (the virtual time is one per priority level).
    assert left == {keys.seq, keys.done, keys.undelivered, keys.virtual_time}
    assert await redis.get(keys.undelivered) == "0"
    assert store.undelivered_count() == 0
    assert await store.find_idempotent("alice", "k") is None


async def test_expire_works_through_more_tasks_than_one_batch(store: RedisStore) -> None:
    tasks = [task(f"t{n}", sequence=n + 1) for n in range(1200)]
    for queued in tasks:
        await store.put(queued)
    for n, queued in enumerate(tasks):
        await store.finish(result(queued), finished_at=1000.0 + n % 7)

    assert await store.expire(now=10_000.0) == 1200
    assert await store.list_tasks(None, None, 10) == []
    assert store.undelivered_count() == 0


# -- reads, counts and connections ---------------------------------------------------------


async def test_listing_pages_through_many_tasks_in_order(store: RedisStore) -> None:
    for n in range(1, 451):
        await store.put(task(f"t{n}", sequence=n))
    for n in range(1, 451, 3):
        await store.mark_running(f"t{n}", 1001.0)

    every = await store.list_tasks(None, None, 1000)
    running = await store.list_tasks(None, TaskState.RUNNING, 1000)
    live = await store.live_tasks()

    assert [t.sequence for t in every] == list(range(1, 451))
    assert [t.sequence for t in running] == list(range(1, 451, 3))
    assert len(live) == 450
    assert [t.sequence for t in await store.list_tasks(None, TaskState.QUEUED, 250)] == [
        n for n in range(1, 451) if n % 3 != 1
    ][:250]


@pytest.mark.parametrize(
    ("same_sequence", "limit"), [(False, 100), (True, 100), (False, 5), (True, 5)]
)
async def test_listing_survives_the_last_task_of_a_page_vanishing(
    store: RedisStore,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
    same_sequence: bool,
    limit: int,
) -> None:
    """The next page starts at the vanished id's score; with equal scores (Redis then orders
    by id) that repeats tasks already listed, which must be neither listed twice nor
    counted against the limit."""
    monkeypatch.setattr(store_module, "SCAN_PAGE", 3)
    for n in range(1, 11):
        await store.put(task(f"t{n:02}", sequence=1 if same_sequence else n))
    run = store._run
    pages = 0

    async def run_then_drop_the_last(script: AsyncScript, *args: str | int | float) -> Any:
        """Runs the script; after the first page, its last task goes (as if expired)."""
        nonlocal pages
        reply = await run(script, *args)
        if script is store._scan_tasks:
            pages += 1
            if pages == 1:
                await redis.zrem(store.keys.tasks, reply[1])
        return reply

    monkeypatch.setattr(store, "_run", run_then_drop_the_last)

    listed = await store.list_tasks(None, None, limit)

    assert [t.task_id for t in listed] == [f"t{n:02}" for n in range(1, 11)][:limit]
    assert pages > 1


async def test_waiting_counts_per_priority(store: RedisStore) -> None:
    for n, priority in enumerate([Priority.LOW, Priority.HIGH, Priority.HIGH, Priority.CRITICAL]):
        await store.admit(task(f"t{n}", priority=priority), capacity=10)
    await store.claim(1, LONG_LEASE)  # the critical one

    assert await store.waiting() == {
        Priority.LOW: 1,
        Priority.NORMAL: 0,
        Priority.HIGH: 2,
        Priority.CRITICAL: 0,
    }


async def test_refresh_sees_another_replicas_results(replica: Replica) -> None:
    first, second = await replica(), await replica()
    await first.admit(task("t1"), capacity=10)
    await second.finish(result(task("t1")), finished_at=1001.0)
    assert first.undelivered_count() == 0  # not until it asks

    await first.refresh()

    assert first.undelivered_count() == 1
    assert (await replica()).undelivered_count() == 1  # open() reads it


async def test_server_time_is_the_redis_clock(store: RedisStore) -> None:
    assert abs(await server_time(store) - time.time()) < 5.0


async def test_close_closes_an_owned_connection_only(prefix: str, redis: Redis) -> None:
    borrowed = RedisStore(redis, prefix, RETENTION)
    await borrowed.close()
    assert await redis.ping()

    owned = await RedisStore.open(REDIS_URL, prefix, RETENTION)
    connection_id = await owned.client.client_id()
    await owned.close()
    await owned.close()  # twice is harmless

    async def disconnected() -> bool:
        return all(int(c["id"]) != connection_id for c in await redis.client_list())

    await eventually(disconnected, "the owned connection is closed")


@pytest.mark.parametrize(
    ("url", "where"),
    [
        ("redis://:s3cr%40t@127.0.0.1:1/0", "127.0.0.1:1"),
        ("redis://someone:s3cr%40t@127.0.0.1:6379/0", "127.0.0.1:6379"),  # refused credentials
    ],
)
async def test_an_unreachable_redis_is_a_store_error_without_the_password(
    url: str, where: str
) -> None:
    with pytest.raises(StoreError) as raised:
        await open_redis(url)

    message = str(raised.value)
    assert message.startswith(f"cannot reach Redis at {where}: ")
    assert "s3cr" not in message
    assert raised.value.__cause__ is None
    assert raised.value.__suppress_context__


async def test_a_malformed_url_is_a_store_error() -> None:
    with pytest.raises(StoreError, match="invalid Redis URL"):
        await open_redis("http://127.0.0.1:6379")
