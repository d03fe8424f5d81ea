"""LocalWorkQueue with [quotas] rate shares, on a fake clock: a throttled tenant's tasks wait
without holding a worker, and workers take other tenants' tasks meanwhile. And admission over
the SQLite store: a worker may start a task while it commits, never publish its result before."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import pytest

from aiproc.server.config import QuotasConfig, TenantQuota
from aiproc.server.core.errors import StoreError
from aiproc.server.core.work import LocalWorkQueue
from aiproc.server.resilience.clock import FakeClock
from aiproc.server.resilience.rate_share import RateShares
from aiproc.server.store.memory import MemoryStore
from aiproc.server.store.sqlite import SqliteStore
from tests.store.builders import result, task
from tests.support import refuse_task_inserts, sqlite_write_locked

PATIENCE = 5.0
"""Seconds a test waits for what needs only a few turns of the event loop."""


async def test_workers_pass_over_a_throttled_tenant_and_come_back_at_its_time() -> None:
    clock = FakeClock()
    # a: 0.25 of 8 tasks a second, burst max(1, 0.25 * 1) = 1; everyone else: no cap.
    quotas = QuotasConfig(tenants=(TenantQuota("a", rate_share=0.25),))
    queue = LocalWorkQueue(
        MemoryStore(retention=60.0),
        capacity=200,
        max_crashes=3,
        quotas=quotas,
        shares=RateShares(quotas, rate=8.0, burst=1),
        clock=clock,
    )
    for n in range(1, 101):
        await queue.admit(task(f"a-{n:03}", "a"))
    for n in range(1, 11):
        await queue.admit(task(f"b-{n:02}", "b"))

    # Eleven workers asking at once, with no time passing: a's one start, then b's ten.
    taken = [await asyncio.wait_for(queue.get(), PATIENCE) for _ in range(11)]
    assert taken[0] == "a-001"
    assert taken[1:] == [f"b-{n:02}" for n in range(1, 11)]

    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    assert await queue.waiting_of("a") == 99
    clock.advance(0.5)
    assert await asyncio.wait_for(waiting, PATIENCE) == "a-002"
    queue.close()


# -- Admission over the SQLite store: a worker may start a task while it commits ----------


def sqlite_queue(store: SqliteStore) -> LocalWorkQueue:
    return LocalWorkQueue(store, capacity=10, max_crashes=3)


async def test_a_worker_takes_a_task_while_its_admission_commits(tmp_path: Path) -> None:
    path = tmp_path / "aiproc.db"
    store = await SqliteStore.open(path, retention=60.0)
    queue = sqlite_queue(store)
    told: list[str] = []
    try:
        with sqlite_write_locked(path):
            admitting = asyncio.create_task(
                queue.admit(task("t1"), lambda queued: told.append(queued.task_id))
            )
            assert await asyncio.wait_for(queue.get(), PATIENCE) == "t1"
            assert told == ["t1"]  # told before anyone could start it
            assert not admitting.done()  # QueueTask's reply still waits for the commit
        admitted, created = await asyncio.wait_for(admitting, PATIENCE)
        assert (admitted.task_id, created) == ("t1", True)
        with contextlib.closing(sqlite3.connect(path)) as other:
            assert other.execute("SELECT task_id FROM tasks").fetchall() == [("t1",)]
    finally:
        queue.close()
        await store.close()


async def test_a_failed_admission_commit_takes_the_task_out_of_the_queue(tmp_path: Path) -> None:
    path = tmp_path / "aiproc.db"
    store = await SqliteStore.open(path, retention=60.0)
    queue = sqlite_queue(store)
    refuse_task_inserts(path)
    try:
        with pytest.raises(StoreError, match="failed"):
            await queue.admit(task("t1"))
        assert len(queue) == 0
        with pytest.raises(StoreError, match="accepts no more changes"):
            await queue.admit(task("t2"))
        assert len(queue) == 0
    finally:
        queue.close()
        await store.close()


async def test_a_result_waits_for_its_tasks_admission_commit(tmp_path: Path) -> None:
    path = tmp_path / "aiproc.db"
    store = await SqliteStore.open(path, retention=60.0)
    queued = task("t1")
    try:
        with sqlite_write_locked(path):
            committing = store.stage(queued)
            await store.mark_running("t1", 1001.0)
            finishing = asyncio.create_task(
                store.finish(result(queued), 1002.0, wait_durable=False)
            )
            await asyncio.sleep(0)  # one turn: finish runs up to its wait
            assert not finishing.done()
            assert await store.pending_results("alice") == []
        assert await asyncio.wait_for(finishing, PATIENCE) is not None
        assert committing.done()
        assert [r.task_id for r in await store.pending_results("alice")] == ["t1"]
    finally:
        await store.close()


async def test_no_result_is_kept_for_a_task_whose_admission_failed(tmp_path: Path) -> None:
    path = tmp_path / "aiproc.db"
    store = await SqliteStore.open(path, retention=60.0)
    refuse_task_inserts(path)
    queued = task("t1")
    try:
        committing = store.stage(queued)
        with pytest.raises(StoreError, match="failed"):
            await store.finish(result(queued), 1002.0, wait_durable=False)
        with pytest.raises(StoreError):
            await committing
        assert await store.pending_results("alice") == []
    finally:
        await store.close()
