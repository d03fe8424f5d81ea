"""What only the SQLite store promises: its file outlives the process, commits are grouped,
and a file it cannot use is refused with a clear error."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import NamedTuple

import pytest

from aiproc.server.core.models import (
    AttemptRecord,
    ErrorCode,
    Priority,
    Task,
    TaskError,
    TaskResult,
    TaskSpec,
    TaskState,
    TokenUsage,
)
from aiproc.server.store.journal import SCHEMA_VERSION
from aiproc.server.store.sqlite import SqliteStore, StoreError
from tests.store.builders import result, task
from tests.support import refuse_task_inserts

RETENTION = 60.0
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "aiproc.db"


@pytest.fixture
async def store(path: Path) -> AsyncIterator[SqliteStore]:
    opened = await SqliteStore.open(path, RETENTION)
    yield opened
    await opened.close()


class Snapshot(NamedTuple):
    """Everything a store answers, as values."""

    tasks: list[Task]
    pending: dict[str, list[TaskResult]]
    keys: dict[str, Task | None]
    live: list[str]
    undelivered: int


async def snapshot(store: SqliteStore) -> Snapshot:
    tasks = [dataclasses.replace(t) for t in await store.list_tasks(None, None, 1000)]
    pending = {c: list(await store.pending_results(c)) for c in {t.client_id for t in tasks}}
    keys = {
        t.spec.idempotency_key: await store.find_idempotent(t.client_id, t.spec.idempotency_key)
        for t in tasks
    }
    live = sorted(t.task_id for t in await store.live_tasks())
    return Snapshot(tasks, pending, keys, live, store.undelivered_count())


async def fill(store: SqliteStore) -> None:
    """Tasks in every state: queued, running with attempts, finished (pending, acked,
    expired), requeued after a crash and after finishing."""
    tasks = [task(f"t{n}", "alice" if n % 2 else "bob", sequence=n, key=f"k{n}") for n in range(8)]
    # Two QueueTasks with one key that raced: the later one is the key's task.
    tasks.append(task("t8", "alice", sequence=8, key="k7"))
    for queued in tasks:
        await store.put(queued)
    for n in (1, 2, 3, 4, 5, 6):
        await store.mark_running(f"t{n}", 1001.0 + n)
    await store.record_attempt("t1")
    await store.record_attempt("t1")
    for i, n in enumerate((6, 3, 4, 5)):
        await store.finish(result(tasks[n], attempts=n), finished_at=1100.0 + 10 * i)
    await store.ack("alice", ["t3"])
    await store.requeue("t2", crashed=True)
    await store.requeue("t4", crashed=False)
    await store.expire(now=1105.0 + RETENTION)  # only t6 finished before 1105


async def test_everything_survives_close_and_reopen(store: SqliteStore, path: Path) -> None:
    await fill(store)
    before = await snapshot(store)
    await store.close()

    reopened = await SqliteStore.open(path, RETENTION)
    try:
        assert reopened.durable
        assert await snapshot(reopened) == before
        assert [t.task_id for t in before.tasks] == [f"t{n}" for n in range(9) if n != 6]
        assert before.live == ["t0", "t1", "t2", "t4", "t7", "t8"]
        assert before.keys["k7"] == before.tasks[-1]
        assert before.undelivered == 1
    finally:
        await reopened.close()


async def test_committed_changes_survive_without_close(store: SqliteStore, path: Path) -> None:
    """As after kill -9: a second store opens the file while the first never closed it."""
    await fill(store)

    second = await SqliteStore.open(path, RETENTION)
    try:
        assert await snapshot(second) == await snapshot(store)
    finally:
        await second.close()


KILLED_WRITER = """
import asyncio, os, signal, sys
from pathlib import Path
from aiproc.server.store.sqlite import SqliteStore
from tests.store.builders import result, task

async def main():
    store = await SqliteStore.open(Path(sys.argv[1]), 60.0)
    tasks = [task(f"t{n}", sequence=n, key=f"k{n}") for n in range(50)]
    await asyncio.gather(*(store.put(t) for t in tasks))
    await asyncio.gather(*(store.mark_running(t.task_id, 1001.0) for t in tasks[10:]))
    await asyncio.gather(*(store.finish(result(t), 1002.0) for t in tasks[30:]))
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


@pytest.mark.slow
async def test_committed_changes_survive_kill_9(path: Path) -> None:
    writer = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_WRITER, str(path), cwd=ROOT
    )
    assert await writer.wait() == -signal.SIGKILL

    store = await SqliteStore.open(path, RETENTION)
    try:
        states = [t.state for t in await store.list_tasks(None, None, 100)]
        assert (
            states
            == [TaskState.QUEUED] * 10 + [TaskState.RUNNING] * 20 + [TaskState.SUCCEEDED] * 20
        )
        assert len(await store.pending_results("alice")) == 20
        assert await store.find_idempotent("alice", "k7") is not None
    finally:
        await store.close()


async def test_concurrent_changes_share_commits(store: SqliteStore, path: Path) -> None:
    await asyncio.gather(*(store.put(task(f"t{n}", sequence=n)) for n in range(200)))

    assert store.commits < 20
    second = await SqliteStore.open(path, RETENTION)
    try:
        assert len(await second.list_tasks(None, None, 1000)) == 200
    finally:
        await second.close()


async def test_a_repeated_idempotency_key_is_answered_once_the_original_is_committed(
    store: SqliteStore, path: Path
) -> None:
    original = asyncio.create_task(store.put(task("t1", key="k1")))
    await asyncio.sleep(0)  # the put is in memory and queued for the writer, not yet committed

    found = await store.find_idempotent("alice", "k1")

    assert found is not None
    with contextlib.closing(sqlite3.connect(path)) as other:
        assert other.execute("SELECT task_id FROM tasks").fetchall() == [("t1",)]
    await original


async def test_a_finish_not_waited_for_is_kept_at_once_and_committed_with_the_next_change(
    store: SqliteStore, path: Path
) -> None:
    queued = task("t1", sequence=1)
    await store.put(queued)
    await store.mark_running("t1", 1001.0)
    commits = store.commits

    kept = await store.finish(result(queued), 1002.0, wait_durable=False)

    assert kept is not None
    assert store.commits == commits  # returned without waiting for a commit
    assert [r.task_id for r in await store.pending_results("alice")] == ["t1"]
    await store.put(task("t2", sequence=2))  # an awaited change carries it to the file
    second = await SqliteStore.open(path, RETENTION)
    try:
        finished = await second.get("t1")
        assert finished is not None
        assert finished.state is TaskState.SUCCEEDED
        assert [r.task_id for r in await second.pending_results("alice")] == ["t1"]
    finally:
        await second.close()


async def test_attempts_are_written_with_the_next_change(store: SqliteStore, path: Path) -> None:
    await store.put(task("t1", sequence=1))
    await store.mark_running("t1", 1001.0)
    await store.record_attempt("t1")
    await store.record_attempt("t1")
    await store.put(task("t2", sequence=2))

    second = await SqliteStore.open(path, RETENTION)
    try:
        running = await second.get("t1")
        assert running is not None
        assert running.attempts == 2
    finally:
        await second.close()


async def test_attempts_are_written_on_close(store: SqliteStore, path: Path) -> None:
    await store.put(task("t1", sequence=1))
    await store.record_attempt("t1")
    await store.close()

    reopened = await SqliteStore.open(path, RETENTION)
    try:
        found = await reopened.get("t1")
        assert found is not None
        assert found.attempts == 1
    finally:
        await reopened.close()


def non_defaults_missing(obj: object) -> list[str]:
    """Fields of a dataclass instance left at their default value."""
    missing = []
    for field in dataclasses.fields(obj):  # type: ignore[arg-type]
        if field.default is not dataclasses.MISSING:
            default = field.default
        elif field.default_factory is not dataclasses.MISSING:
            default = field.default_factory()
        else:
            continue
        if getattr(obj, field.name) == default:
            missing.append(f"{type(obj).__name__}.{field.name}")
    return missing


async def test_every_field_survives_reopen(store: SqliteStore, path: Path) -> None:
    """Sets every field of every stored dataclass, so a new field fails here until stored."""
    spec = TaskSpec(
        url="https://example.com/a",
        content="héllo\n\u2603",
        priority=Priority.CRITICAL,
        timeout=12.5,
        instructions="shorter",
        model="m-1",
        idempotency_key="key",
        metadata={"team": "x", "ü": "ß"},
        max_retries=4,
    )
    failure = TaskError(ErrorCode.RATE_LIMITED, "slow down")
    attempt = AttemptRecord("openai", started_at=1001.25, duration=0.5, error=failure)
    stored = Task(
        task_id="t1",
        client_id="alice",
        spec=spec,
        created_at=1000.125,
        sequence=7,
        trace_context={"traceparent": "00-abc-def-01"},
        crashes=2,
    )
    outcome = TaskResult(
        task_id="t1",
        client_id="alice",
        url=spec.url,
        state=TaskState.FAILED,
        enhanced_content="better",
        error=TaskError(ErrorCode.ALL_PROVIDERS_FAILED, "none left"),
        provider="openai",
        model="m-1",
        attempts=3,
        usage=TokenUsage(11, 22),
        queue_time=1.5,
        processing_time=2.5,
        trace_id="0af7651916cd43dd8448eb211c80319c",
        completed_at=1003.75,
        metadata={"team": "x"},
        history=(attempt, dataclasses.replace(attempt, provider="anthropic", error=None)),
    )
    await store.put(stored)
    await store.mark_running("t1", 1001.0)
    for _ in range(3):
        await store.record_attempt("t1")
    await store.finish(outcome, finished_at=1004.0)
    expected = dataclasses.replace(stored)
    await store.close()

    reopened = await SqliteStore.open(path, RETENTION)
    try:
        found = await reopened.get("t1")
    finally:
        await reopened.close()

    assert found == expected
    samples = (expected, spec, outcome, attempt, failure, outcome.usage)
    assert [name for sample in samples for name in non_defaults_missing(sample)] == []


async def test_a_failed_commit_stops_every_later_change(store: SqliteStore, path: Path) -> None:
    await store.put(task("t1", sequence=1))
    refuse_task_inserts(path)

    with pytest.raises(StoreError, match="failed"):
        await store.put(task("t2", sequence=2))
    with pytest.raises(StoreError, match="accepts no more changes"):
        await store.mark_running("t1", 1001.0)
    assert await store.get("t1") is not None  # reads still answer from memory
    await store.close()

    with contextlib.closing(sqlite3.connect(path)) as other:
        other.execute("DROP TRIGGER refuse")
    reopened = await SqliteStore.open(path, RETENTION)
    try:
        tasks = await reopened.list_tasks(None, None, 10)
        assert [(t.task_id, t.state) for t in tasks] == [("t1", TaskState.QUEUED)]
    finally:
        await reopened.close()


async def test_a_newer_schema_is_refused(store: SqliteStore, path: Path) -> None:
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as other:
        other.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        await SqliteStore.open(path, RETENTION)


async def test_another_database_is_refused(path: Path) -> None:
    with contextlib.closing(sqlite3.connect(path)) as other:
        other.execute("CREATE TABLE invoices (id INTEGER)")

    with pytest.raises(StoreError, match="not an aiproc store"):
        await SqliteStore.open(path, RETENTION)


@pytest.fixture
def not_a_database(path: Path) -> Path:
    path.write_bytes(b"certainly not SQLite " * 100)
    return path


async def test_a_file_that_is_not_a_database_is_refused(not_a_database: Path) -> None:
    with pytest.raises(StoreError, match="file is not a database") as refused:
        await SqliteStore.open(not_a_database, RETENTION)
    assert str(refused.value).startswith(f"cannot open the store {not_a_database}:")


@pytest.fixture
def under_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a-file").write_text("")
    return tmp_path / "a-file" / "aiproc.db"


async def test_a_path_that_cannot_be_created_is_refused(under_a_file: Path) -> None:
    with pytest.raises(StoreError, match="unable to open database file") as refused:
        await SqliteStore.open(under_a_file, RETENTION)
    assert str(refused.value).startswith(f"cannot open the store {under_a_file}:")


async def test_a_result_without_its_task_is_refused(store: SqliteStore, path: Path) -> None:
    done = task("t1", sequence=1)
    await store.put(done)
    await store.finish(result(done), finished_at=1001.0)
    await store.close()
    with contextlib.closing(sqlite3.connect(path)) as other, other:
        other.execute("DELETE FROM results")

    with pytest.raises(
        StoreError, match=r"damaged: .*t1 is succeeded; its result disagrees or is missing"
    ):
        await SqliteStore.open(path, RETENTION)


async def test_repr_names_the_file_and_its_commits(store: SqliteStore, path: Path) -> None:
    await store.put(task("t1"))

    assert repr(store).startswith(f"<SqliteStore {path} <Journal {path} open commits=1")
