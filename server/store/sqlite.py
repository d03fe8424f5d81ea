"""A store that survives the process: memory answers every read, a SQLite file keeps every change.

Each change is applied to an in-process MemoryStore (so it has exactly the
memory store's semantics) and committed to a SQLite file in WAL mode before the
method returns, except those whose loss to a crash only repeats work (a task's
start, an acknowledgement, a result only published), which are written behind,
with the next change; on open, the file is replayed into memory. Commits are grouped
by the Journal's writer thread. A change is visible to other callers from the
moment it is made, before its commit: at worst a crash then delivers a result
twice, which at-least-once allows.

Durability: with `fsync=False` (the default, PRAGMA synchronous=NORMAL) a
committed change is in the operating system's cache when the method returns,
so it survives the process being killed (kill -9, OOM), but not a power loss or
a kernel crash. `fsync=True` (synchronous=FULL) fsyncs every commit and
survives those too, at the cost of one fsync per group of changes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Collection, Sequence
from functools import partial
from pathlib import Path

from aiproc.server.core.errors import StoreError
from aiproc.server.core.models import Task, TaskResult, TaskState
from aiproc.server.store.codec import (
    dumps,
    result_from_json,
    result_to_json,
    spec_from_json,
    spec_to_json,
)
from aiproc.server.store.journal import Journal, ResultRow, Statement, TaskRow
from aiproc.server.store.memory import MemoryStore

__all__ = ["SqliteStore", "StoreError"]

# A put of a known task_id replaces the task, as MemoryStore.put does, and keeps its rowid
# (the order tasks are replayed in), which INSERT OR REPLACE would not.
_INSERT_TASK = """
INSERT INTO tasks (task_id, client_id, sequence, created_at, state, started_at, finished_at,
                   attempts, crashes, spec, trace_context)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (task_id) DO UPDATE SET
    client_id = excluded.client_id, sequence = excluded.sequence,
    created_at = excluded.created_at, state = excluded.state, started_at = excluded.started_at,
    finished_at = excluded.finished_at, attempts = excluded.attempts,
    crashes = excluded.crashes, spec = excluded.spec, trace_context = excluded.trace_context
"""


class SqliteStore:
    """A MemoryStore whose every change is committed to a SQLite file before it returns."""

    def __init__(self, path: Path, memory: MemoryStore, journal: Journal) -> None:
        """Use `await SqliteStore.open(...)`."""
        self.path = path
        self._memory = memory
        self._journal = journal
        # Tasks whose attempt count changed since it was last written (see record_attempt).
        self._unsaved_attempts: dict[str, Task] = {}
        # Staged tasks whose commit is in flight, with its future (see finish).
        self._committing: dict[str, asyncio.Future[None]] = {}

    @classmethod
    async def open(cls, path: Path, retention: float, *, fsync: bool = False) -> SqliteStore:
        """Opens (or creates) the store file at `path` and loads it; raises StoreError if it
        cannot be opened, is not an aiproc store, or was written by a newer aiproc."""
        journal, tasks, results = await Journal.open(path, fsync=fsync)
        try:
            memory = await _replay(path, retention, tasks, results)
        except BaseException:
            await journal.close()
            raise
        return cls(path, memory, journal)

    @property
    def durable(self) -> bool:
        return True

    @property
    def commits(self) -> int:
        """Transactions committed since open: far fewer than changes under concurrency."""
        return self._journal.commits

    # MemoryStore's methods never suspend, so each change below reaches memory and the
    # journal's queue in one step: the file sees changes in the order memory did.

    async def put(self, task: Task) -> None:
        # Shielded: a caller cancelled meanwhile must not cancel what `finish` may wait on.
        await asyncio.shield(self.stage(task))

    def stage(self, task: Task) -> asyncio.Future[None]:
        statements = self._with_unsaved_attempts(((_INSERT_TASK, _task_row(task)),))
        committed = self._journal.submit(statements)
        self._memory.record(task)
        self._committing[task.task_id] = committed
        committed.add_done_callback(partial(self._committed, task.task_id))
        return committed

    def _committed(self, task_id: str, commit: asyncio.Future[None]) -> None:
        if self._committing.get(task_id) is commit:  # not a later put of the same id's
            del self._committing[task_id]

    async def get(self, task_id: str) -> Task | None:
        return await self._memory.get(task_id)

    async def find_idempotent(self, client_id: str, key: str) -> Task | None:
        task = await self._memory.find_idempotent(client_id, key)
        if task is not None:
            # It may be a put still being committed; answering with it before then would
            # hand out a task a crash could lose.
            await self._journal.write(())
        return task

    async def mark_running(self, task_id: str, started_at: float) -> Task | None:
        task = await self._memory.mark_running(task_id, started_at)
        if task is not None:
            # Not waited for: a crash before it commits leaves the task QUEUED in the file,
            # so it runs again without a crash counted, which is what a crash a moment
            # earlier would have done. It commits long before a provider call returns.
            self._write_behind(
                (
                    "UPDATE tasks SET state = ?, started_at = ? WHERE task_id = ?",
                    (task.state.value, task.started_at, task_id),
                )
            )
        return task

    async def record_attempt(self, task_id: str) -> None:
        """Counts one provider call; written with the next change, not on its own, because it
        happens on every provider call and losing a few counts to a crash is harmless."""
        await self._memory.record_attempt(task_id)
        task = await self._memory.get(task_id)
        if task is not None:
            self._unsaved_attempts[task_id] = task

    async def finish(
        self, result: TaskResult, finished_at: float, *, wait_durable: bool = True
    ) -> TaskResult | None:
        committing = self._committing.get(result.task_id)
        if committing is not None:
            # A worker may start a task while its admission commits; a result published
            # before that commit would be of a task that QueueTask may yet report lost.
            await asyncio.shield(committing)
        kept = await self._memory.finish(result, finished_at)
        if kept is None:
            return None
        task = await self._memory.get(result.task_id)
        assert task is not None  # finish just kept it
        self._unsaved_attempts.pop(task.task_id, None)
        statements = (
            (
                "UPDATE tasks SET state = ?, finished_at = ?, attempts = ? WHERE task_id = ?",
                (task.state.value, task.finished_at, task.attempts, task.task_id),
            ),
            (
                "INSERT INTO results (task_id, client_id, result) VALUES (?, ?, ?)",
                (task.task_id, task.client_id, dumps(result_to_json(kept))),
            ),
        )
        if wait_durable:
            await self._write(*statements)
        else:
            # Travels with the next awaited change (a QueueTask's, say) or after
            # BEHIND_DELAY: a commit fewer per task, and the caller publishes the result
            # without waiting for a round trip through the writer thread.
            self._write_behind(*statements)
        return kept

    async def pending_results(
        self, client_id: str, task_ids: Collection[str] | None = None
    ) -> Sequence[TaskResult]:
        return await self._memory.pending_results(client_id, task_ids)

    async def ack(self, client_id: str, task_ids: Collection[str]) -> int:
        removed = await self._memory.ack(client_id, task_ids)
        if removed:
            sql = "UPDATE results SET acked = 1 WHERE task_id = ? AND client_id = ?"
            # Not waited for: an acknowledgement lost to a crash means the result is
            # delivered again, which at-least-once delivery allows (the caller of Ack is
            # never told when it is on disk anyway).
            self._write_behind(*((sql, (task_id, client_id)) for task_id in task_ids))
        return removed

    async def live_tasks(self) -> Sequence[Task]:
        return await self._memory.live_tasks()

    async def last_sequence(self) -> int:
        return await self._memory.last_sequence()

    async def requeue(self, task_id: str, *, crashed: bool) -> Task | None:
        task = await self._memory.requeue(task_id, crashed=crashed)
        if task is not None:
            await self._write(
                ("DELETE FROM results WHERE task_id = ?", (task_id,)),
                (
                    "UPDATE tasks SET state = ?, started_at = NULL, finished_at = NULL,"
                    " crashes = ? WHERE task_id = ?",
                    (task.state.value, task.crashes, task_id),
                ),
            )
        return task

    async def list_tasks(
        self, client_id: str | None, state: TaskState | None, limit: int
    ) -> Sequence[Task]:
        return await self._memory.list_tasks(client_id, state, limit)

    async def expire(self, now: float) -> int:
        expired = await self._memory.expire(now)
        if expired:
            # Memory stops at the first task (in finishing order) still within the retention;
            # the file drops every one past it. They differ only if the wall clock stepped
            # back between finishes, and then the file's answer is the one the retention asks.
            cutoff = (now - self._memory.retention,)
            await self._write(
                (
                    "DELETE FROM results WHERE task_id IN"
                    " (SELECT task_id FROM tasks WHERE finished_at <= ?)",
                    cutoff,
                ),
                ("DELETE FROM tasks WHERE finished_at <= ?", cutoff),
            )
        return expired

    def undelivered_count(self) -> int:
        return self._memory.undelivered_count()

    async def close(self) -> None:
        """Commits what is pending (unsaved attempt counts too) and closes the file."""
        if self._journal.closed:
            return
        try:
            if self._unsaved_attempts:
                await self._write()
        finally:
            await self._journal.close()
            await self._memory.close()

    async def _write(self, *statements: Statement) -> None:
        await self._journal.write(self._with_unsaved_attempts(statements))

    def _write_behind(self, *statements: Statement) -> None:
        self._journal.write_behind(self._with_unsaved_attempts(statements))

    def _with_unsaved_attempts(self, statements: Sequence[Statement]) -> Sequence[Statement]:
        if not self._unsaved_attempts:
            return statements
        sql = "UPDATE tasks SET attempts = ? WHERE task_id = ?"
        attempts = [(sql, (t.attempts, t.task_id)) for t in self._unsaved_attempts.values()]
        self._unsaved_attempts.clear()
        return (*attempts, *statements)

    def __repr__(self) -> str:
        return f"<SqliteStore {self.path} {self._journal!r} {self._memory!r}>"


async def _replay(
    path: Path, retention: float, tasks: list[TaskRow], results: list[ResultRow]
) -> MemoryStore:
    """A MemoryStore holding the file's tasks, built through its own methods.

    Finished tasks go in unfinished and are finished again in the order they first
    finished, so retention and delivery order come out as they were.
    """
    memory = MemoryStore(retention)
    stored: dict[str, tuple[TaskState, float | None]] = {}  # task_id -> state, finished_at
    acked: dict[str, list[str]] = {}  # client_id -> task_ids
    try:
        for row in tasks:
            task = _task_from_row(row)
            stored[task.task_id] = (task.state, task.finished_at)
            if task.state.is_terminal:
                task.state, task.finished_at = TaskState.RUNNING, None
            await memory.put(task)
        for task_id, text, was_acked in results:
            result = result_from_json(json.loads(text))
            _, finished_at = stored.get(task_id, (TaskState.QUEUED, None))
            if finished_at is None or not await memory.finish(result, finished_at):
                raise ValueError(f"a result for task {task_id}, which has not finished")
            if was_acked:
                acked.setdefault(result.client_id, []).append(task_id)
        for client_id, task_ids in acked.items():
            await memory.ack(client_id, task_ids)
        for task_id, (state, _) in stored.items():
            replayed = await memory.get(task_id)
            if replayed is None or replayed.state is not state:
                raise ValueError(
                    f"task {task_id} is {state.value}; its result disagrees or is missing"
                )
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        raise StoreError(f"the store {path} is damaged: {exc!r}") from exc
    return memory


# -- Rows: explicit, field by field; enums by value (the JSON is in codec) ----------------


def _task_row(task: Task) -> tuple[object, ...]:
    return (
        task.task_id,
        task.client_id,
        task.sequence,
        task.created_at,
        task.state.value,
        task.started_at,
        task.finished_at,
        task.attempts,
        task.crashes,
        dumps(spec_to_json(task.spec)),
        dumps(dict(task.trace_context)),
    )


def _task_from_row(row: TaskRow) -> Task:
    task_id, client_id, sequence, created_at, state, started_at, finished_at = row[:7]
    attempts, crashes, spec, trace_context = row[7:]
    return Task(
        task_id=task_id,
        client_id=client_id,
        spec=spec_from_json(json.loads(spec)),
        created_at=created_at,
        state=TaskState(state),
        started_at=started_at,
        finished_at=finished_at,
        attempts=attempts,
        sequence=sequence,
        trace_context=json.loads(trace_context),
        crashes=crashes,
    )
