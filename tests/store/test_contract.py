"""The behaviour every TaskStore shares, run against each store in STORES."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from aiproc.server.cluster.connection import open_redis
from aiproc.server.cluster.store import RedisStore
from aiproc.server.core.models import Task, TaskState
from aiproc.server.store.base import TaskStore
from aiproc.server.store.memory import MemoryStore
from aiproc.server.store.sqlite import SqliteStore
from tests.redis_support import REDIS_URL, delete_prefix, unique_prefix
from tests.store.builders import result, task
from tests.store.reopening import ReopeningStore

RETENTION = 60.0

StoreFactory = Callable[[Path, float, AsyncExitStack], Awaitable[TaskStore]]
"""Opens an empty store with this retention, keeping any files under the given folder;
whatever else it leaves behind, it gives the exit stack to clean up after the store closes."""


async def _memory(folder: Path, retention: float, cleanup: AsyncExitStack) -> TaskStore:
    return MemoryStore(retention)


async def _redis(folder: Path, retention: float, cleanup: AsyncExitStack) -> TaskStore:
    """A RedisStore under a prefix of its own, whose keys are deleted after the test."""
    client = await open_redis(REDIS_URL)
    cleanup.push_async_callback(client.aclose)
    prefix = unique_prefix()
    cleanup.push_async_callback(delete_prefix, prefix)
    return RedisStore(client, prefix, retention)


STORES: dict[str, StoreFactory] = {
    "memory": _memory,
    "sqlite": lambda folder, retention, _: SqliteStore.open(folder / "aiproc.db", retention),
    "sqlite-reopened": lambda folder, retention, _: ReopeningStore.open(folder, retention),
    "redis": _redis,
}


@pytest.fixture(params=sorted(STORES))
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[TaskStore]:
    async with AsyncExitStack() as cleanup:
        opened = await STORES[request.param](tmp_path, RETENTION, cleanup)
        yield opened
        await opened.close()


def ids(tasks: Iterable[Task]) -> list[str]:
    return [t.task_id for t in tasks]


async def test_put_then_get_returns_the_task(store: TaskStore) -> None:
    queued = task("t1", sequence=1)
    await store.put(queued)

    found = await store.get("t1")

    assert found == queued
    assert found is not None
    assert found.state is TaskState.QUEUED
    assert await store.get("unknown") is None


async def test_find_idempotent_matches_client_and_key(store: TaskStore) -> None:
    await store.put(task("t1", "alice", key="k1"))
    await store.put(task("t2", "alice"))

    found = await store.find_idempotent("alice", "k1")

    assert found is not None
    assert found.task_id == "t1"
    assert await store.find_idempotent("bob", "k1") is None
    assert await store.find_idempotent("alice", "k2") is None
    assert await store.find_idempotent("alice", "") is None


async def test_mark_running_only_from_queued(store: TaskStore) -> None:
    await store.put(task("t1"))

    running = await store.mark_running("t1", started_at=1001.0)
    again = await store.mark_running("t1", started_at=1002.0)

    assert running is not None
    assert running.state is TaskState.RUNNING
    assert running.started_at == 1001.0
    assert again is None
    assert (await store.get("t1")) == running
    assert await store.mark_running("unknown", 1003.0) is None


async def test_mark_running_refuses_a_finished_task(store: TaskStore) -> None:
    queued = task("t1")
    await store.put(queued)
    await store.finish(result(queued, TaskState.CANCELLED), finished_at=1001.0)

    assert await store.mark_running("t1", 1002.0) is None
    found = await store.get("t1")
    assert found is not None
    assert found.state is TaskState.CANCELLED
    assert found.started_at is None


async def test_record_attempt_counts_into_the_result(store: TaskStore) -> None:
    queued = task("t1")
    await store.put(queued)
    await store.mark_running("t1", 1001.0)
    for _ in range(3):
        await store.record_attempt("t1")
    await store.record_attempt("unknown")

    await store.finish(result(queued, attempts=1), finished_at=1002.0)

    found = await store.get("t1")
    assert found is not None
    assert found.attempts == 3
    assert found.result is not None
    assert found.result.attempts == 3


async def test_finish_only_once(store: TaskStore) -> None:
    queued = task("t1")
    await store.put(queued)
    await store.mark_running("t1", 1001.0)

    first = await store.finish(result(queued, TaskState.SUCCEEDED), finished_at=1002.0)
    second = await store.finish(result(queued, TaskState.FAILED), finished_at=1003.0)

    assert first == result(queued, TaskState.SUCCEEDED)
    assert second is None
    found = await store.get("t1")
    assert found is not None
    assert found.state is TaskState.SUCCEEDED
    assert found.finished_at == 1002.0
    assert found.result == result(queued, TaskState.SUCCEEDED)
    assert [r.state for r in await store.pending_results("alice")] == [TaskState.SUCCEEDED]
    assert not await store.finish(result(task("unknown")), finished_at=1004.0)


async def test_pending_results_per_client_in_completion_order(store: TaskStore) -> None:
    tasks = [task("t1", "alice", sequence=1), task("t2", "bob", sequence=2)]
    tasks += [task("t3", "alice", sequence=3), task("t4", "alice", sequence=4)]
    for queued in tasks:
        await store.put(queued)
    for index in (3, 1, 0, 2):  # t4, t2, t1, t3
        await store.finish(result(tasks[index]), finished_at=1001.0 + index)

    alice = await store.pending_results("alice")
    chosen = await store.pending_results("alice", {"t1", "t4", "t2", "unknown"})

    assert [r.task_id for r in alice] == ["t4", "t1", "t3"]
    assert [r.task_id for r in chosen] == ["t4", "t1"]
    assert [r.task_id for r in await store.pending_results("bob")] == ["t2"]
    assert await store.pending_results("carol") == []


async def test_a_few_ids_of_a_longer_backlog_come_in_completion_order(store: TaskStore) -> None:
    tasks = [task(f"t{n}", "alice", sequence=n) for n in range(1, 7)]
    for queued in tasks:
        await store.put(queued)
    for index in (5, 2, 0, 4, 1, 3):  # t6, t3, t1, t5, t2, t4
        await store.finish(result(tasks[index]), finished_at=1001.0 + index)

    chosen = await store.pending_results("alice", ["t4", "t1", "unknown", "t6", "t1"])

    assert [r.task_id for r in chosen] == ["t6", "t1", "t4"]


async def test_ack_removes_results_and_counts_them(store: TaskStore) -> None:
    mine, theirs = task("t1", "alice", sequence=1), task("t2", "bob", sequence=2)
    for queued in (mine, theirs, task("t3", "alice", sequence=3)):
        await store.put(queued)
    await store.finish(result(mine), finished_at=1001.0)
    await store.finish(result(theirs), finished_at=1002.0)

    removed = await store.ack("alice", ["t1", "t2", "t3", "unknown"])

    assert removed == 1
    assert await store.pending_results("alice") == []
    assert [r.task_id for r in await store.pending_results("bob")] == ["t2"]
    assert await store.ack("alice", ["t1"]) == 0
    acked = await store.get("t1")
    assert acked is not None
    assert acked.result == result(mine)  # the task still answers with its result


async def test_requeue_a_crashed_task_counts_the_crash(store: TaskStore) -> None:
    await store.put(task("t1"))
    await store.mark_running("t1", 1001.0)

    requeued = await store.requeue("t1", crashed=True)
    again = await store.requeue("t1", crashed=False)

    assert requeued is not None
    assert requeued.state is TaskState.QUEUED
    assert requeued.started_at is None
    assert again is not None
    assert again.crashes == 1
    assert await store.requeue("unknown", crashed=True) is None
    assert await store.mark_running("t1", 1002.0) is not None


async def test_requeue_a_finished_task_drops_its_result(store: TaskStore) -> None:
    first, second = task("t1", sequence=1), task("t2", sequence=2)
    for queued in (first, second):
        await store.put(queued)
        await store.finish(result(queued, TaskState.FAILED), finished_at=1001.0)

    requeued = await store.requeue("t1", crashed=False)

    assert requeued is not None
    assert (requeued.state, requeued.result, requeued.finished_at) == (
        TaskState.QUEUED,
        None,
        None,
    )
    assert requeued.crashes == 0
    assert [r.task_id for r in await store.pending_results("alice")] == ["t2"]
    assert store.undelivered_count() == 1
    assert ids(await store.live_tasks()) == ["t1"]
    assert await store.finish(result(first), finished_at=1002.0)
    assert [r.task_id for r in await store.pending_results("alice")] == ["t2", "t1"]


async def test_live_tasks_are_the_queued_and_running_ones(store: TaskStore) -> None:
    for n in range(1, 4):
        await store.put(task(f"t{n}", sequence=n))
    await store.mark_running("t2", 1001.0)
    done = await store.get("t3")
    assert done is not None
    await store.finish(result(done), finished_at=1002.0)

    live = await store.live_tasks()

    assert sorted((t.task_id, t.state) for t in live) == [
        ("t1", TaskState.QUEUED),
        ("t2", TaskState.RUNNING),
    ]


async def test_list_tasks_filters_orders_and_limits(store: TaskStore) -> None:
    for n, client in [(3, "alice"), (1, "alice"), (4, "bob"), (2, "alice"), (5, "alice")]:
        await store.put(task(f"t{n}", client, sequence=n))
    await store.mark_running("t2", 1001.0)
    await store.mark_running("t4", 1001.0)

    assert ids(await store.list_tasks(None, None, 10)) == ["t1", "t2", "t3", "t4", "t5"]
    assert ids(await store.list_tasks("alice", None, 10)) == ["t1", "t2", "t3", "t5"]
    assert ids(await store.list_tasks(None, TaskState.RUNNING, 10)) == ["t2", "t4"]
    assert ids(await store.list_tasks("alice", TaskState.QUEUED, 2)) == ["t1", "t3"]
    assert ids(await store.list_tasks("carol", None, 10)) == []


async def test_expire_drops_old_finished_tasks_and_keeps_live_ones(store: TaskStore) -> None:
    old, recent = task("t1", key="k1", sequence=1), task("t2", key="k2", sequence=2)
    for queued in (old, recent, task("t3", key="k3", sequence=3)):
        await store.put(queued)
    await store.finish(result(old), finished_at=2000.0)
    await store.finish(result(recent), finished_at=2030.0)

    expired = await store.expire(now=2000.0 + RETENTION)

    assert expired == 1
    assert await store.get("t1") is None
    assert await store.find_idempotent("alice", "k1") is None
    assert [r.task_id for r in await store.pending_results("alice")] == ["t2"]
    assert store.undelivered_count() == 1
    assert await store.find_idempotent("alice", "k2") is not None
    assert await store.get("t3") is not None
    assert await store.expire(now=2029.0 + RETENTION) == 0
    assert await store.expire(now=10_000.0) == 1
    assert ids(await store.list_tasks(None, None, 10)) == ["t3"]


async def test_undelivered_count_follows_finish_ack_and_expire(store: TaskStore) -> None:
    tasks = [task("t1", "alice", sequence=1), task("t2", "bob", sequence=2)]
    tasks.append(task("t3", "bob", sequence=3))
    for queued in tasks:
        await store.put(queued)
    assert store.undelivered_count() == 0

    for n, queued in enumerate(tasks):
        await store.finish(result(queued), finished_at=1000.0 + n)
    assert store.undelivered_count() == 3

    await store.ack("bob", ["t2"])
    assert store.undelivered_count() == 2

    await store.expire(now=1000.0 + RETENTION)
    assert store.undelivered_count() == 1


async def test_last_sequence_covers_finished_tasks_too(store: TaskStore) -> None:
    assert await store.last_sequence() == 0
    for n in (2, 7, 4):
        await store.put(task(f"t{n}", sequence=n))
    done = await store.get("t7")
    assert done is not None
    await store.finish(result(done), finished_at=1002.0)
    assert await store.last_sequence() == 7
