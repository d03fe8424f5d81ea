"""The SQLite file of a store: its schema, opening it, and the one thread that writes it.

Callers on the event loop hand over a change (a few SQL statements) and await
its commit, or queue it without waiting. The changes made in one turn of the
event loop go to the thread together; changes nobody waits for go with the
next awaited one (or after `BEHIND_DELAY`), never on their own. The thread owns
the write connection; it takes everything queued since its last commit into
one transaction, commits, and settles all those callers at once: 64 concurrent
changes cost one commit, not 64.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiproc.server.core.errors import StoreError

BEHIND_DELAY = 0.01
"""Seconds a change nobody waits for may wait for an awaited one to travel with."""

SCHEMA_VERSION = 1
"""Kept in PRAGMA user_version; a file with a higher one was written by a newer aiproc."""

_SCHEMA = """
CREATE TABLE tasks (
    task_id TEXT PRIMARY KEY,
    client_id TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    created_at REAL NOT NULL,
    state TEXT NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL,
    crashes INTEGER NOT NULL,
    spec TEXT NOT NULL,
    trace_context TEXT NOT NULL
);
CREATE INDEX tasks_by_finished_at ON tasks (finished_at) WHERE finished_at IS NOT NULL;
-- One row per finished task; `completion` orders them as they finished.
CREATE TABLE results (
    completion INTEGER PRIMARY KEY,
    task_id TEXT NOT NULL UNIQUE,
    client_id TEXT NOT NULL,
    result TEXT NOT NULL,
    acked INTEGER NOT NULL DEFAULT 0
);
"""

Statement = tuple[str, Sequence[object]]
"""One SQL statement and its parameters."""

TaskRow = tuple[str, str, int, float, str, float | None, float | None, int, int, str, str]
"""task_id, client_id, sequence, created_at, state, started_at, finished_at, attempts,
crashes, spec (JSON), trace_context (JSON)."""

ResultRow = tuple[str, str, int]
"""task_id, result (JSON), acked."""


@dataclass(frozen=True, slots=True)
class _Change:
    statements: Sequence[Statement]
    committed: asyncio.Future[None] | None
    """None for a change nobody waits for (see `write_behind`)."""


class Journal:
    """Commits the changes of many callers in shared transactions, on its own thread.

    After a failed commit it refuses every later change: the store's memory
    already holds changes the file lacks, and only a restart, which reloads
    the file, brings the two back together.
    """

    def __init__(
        self, connection: sqlite3.Connection, name: str, *, behind_delay: float = BEHIND_DELAY
    ) -> None:
        """Use `await Journal.open(...)`."""
        self.name = name
        self.commits = 0
        """Transactions committed so far."""
        self.changes = 0
        """Changes committed so far (each is one caller's write)."""
        self._connection = connection
        # One cursor for every statement: `connection.execute` makes a new one each time.
        self._cursor = connection.cursor()
        self._behind_delay = behind_delay
        self._inbox: queue.SimpleQueue[list[_Change] | None] = queue.SimpleQueue()
        self._pending: list[_Change] = []
        """Changes not handed over yet: this turn's, and those nobody waits for since the last
        hand-over."""
        self._handing_over = False
        """A hand-over is due at the end of this turn (an awaited change is pending)."""
        self._timer: asyncio.TimerHandle | None = None
        """The hand-over of changes nobody waits for, when no awaited one comes first."""
        self._failure: Exception | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"journal {name}", daemon=True)
        self._thread.start()

    @classmethod
    async def open(
        cls, path: Path, *, fsync: bool, behind_delay: float = BEHIND_DELAY
    ) -> tuple[Journal, list[TaskRow], list[ResultRow]]:
        """Opens (or creates) the file and reads every task, and every result in the order
        they finished; raises StoreError if the file cannot be opened, is not a store, or
        was written by a newer aiproc. `fsync` makes every commit survive power loss;
        `behind_delay` bounds how long a change nobody waits for stays in memory."""
        connection, tasks, results = await asyncio.to_thread(_read, path, fsync)
        return cls(connection, str(path), behind_delay=behind_delay), tasks, results

    @property
    def closed(self) -> bool:
        return self._closed

    async def write(self, statements: Sequence[Statement]) -> None:
        """Returns once `statements` are committed, in one transaction with whatever queued
        alongside; raises StoreError if they were not. An empty change waits until every
        change queued before it is committed."""
        # If the caller is cancelled here the change is still committed: it is queued.
        await self.submit(statements)

    def submit(self, statements: Sequence[Statement]) -> asyncio.Future[None]:
        """Queues `statements` for the next commit and returns the future of that commit
        (raising StoreError if it failed); raises StoreError at once if the journal already
        refuses changes. Cancelling the future does not stop the commit."""
        self._check_taking()
        loop = asyncio.get_running_loop()
        committed = loop.create_future()
        self._pending.append(_Change(statements, committed))
        # Handing each change to the thread on its own would wake it (and make it take the
        # GIL) for every change, and commit most of them alone: one hand-over per turn of
        # the event loop gathers all the changes its tasks made into one commit.
        if not self._handing_over:
            self._handing_over = True
            loop.call_soon(self._hand_over)
        return committed

    def write_behind(self, statements: Sequence[Statement]) -> None:
        """Queues `statements` for the next commit without waiting for it; raises StoreError
        if the journal already refuses changes.

        For changes whose loss to a crash in the moment before their commit is harmless
        (the task would run again, a result be delivered again): it spares the caller a
        suspension and a wake-up per change. It goes to the thread with the next `write`, or
        after `behind_delay` if none comes, so it never costs a wake-up and a commit of its
        own while awaited changes keep coming. Order is kept: a later `write` commits after
        it, and a failed commit of it fails that later write.
        """
        self._check_taking()
        self._pending.append(_Change(statements, None))
        if not self._handing_over and self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._behind_delay, self._hand_over)

    def _check_taking(self) -> None:
        """Raises StoreError unless the journal still takes changes."""
        if self._closed:
            raise StoreError(f"the store {self.name} is closed")
        if self._failure is not None:
            raise self._error()

    def _hand_over(self) -> None:
        self._handing_over = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            self._inbox.put(self._pending)
            self._pending = []

    async def close(self) -> None:
        """Commits what is queued, then closes the connection."""
        if self._closed:
            return
        self._closed = True
        self._hand_over()
        self._inbox.put(None)
        await asyncio.to_thread(self._thread.join)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch: list[_Change] = []
            item = self._inbox.get()
            while True:
                if item is None:
                    stopping = True
                else:
                    batch += item
                try:
                    item = self._inbox.get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit(batch)
        self._connection.close()

    def _commit(self, batch: list[_Change]) -> None:
        if self._failure is None and any(change.statements for change in batch):
            try:
                self._cursor.execute("BEGIN")
                for sql, rows in _runs(batch):
                    if len(rows) == 1:
                        self._cursor.execute(sql, rows[0])
                    else:
                        self._cursor.executemany(sql, rows)
                self._cursor.execute("COMMIT")
            except Exception as exc:  # whatever it is, the callers must hear of it, not hang
                if self._connection.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        self._connection.execute("ROLLBACK")
                self._failure = exc
            else:
                self.commits += 1
        if self._failure is None:
            self.changes += len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = {}
        for change in batch:
            if change.committed is not None:
                by_loop.setdefault(change.committed.get_loop(), []).append(change.committed)
        for loop, futures in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits any more
                loop.call_soon_threadsafe(self._settle, futures, self._failure is None)

    def _settle(self, futures: Iterable[asyncio.Future[None]], committed: bool) -> None:
        for future in futures:
            if future.done():
                continue  # its caller was cancelled; the change was committed all the same
            if committed:
                future.set_result(None)
            else:
                future.set_exception(self._error())

    def _error(self) -> StoreError:
        error = StoreError(
            f"writing the store {self.name} failed ({self._failure}); it accepts no more"
            " changes: restart to reload it from the file"
        )
        error.__cause__ = self._failure
        return error

    def __repr__(self) -> str:
        state = "closed" if self._closed else "failed" if self._failure else "open"
        return f"<Journal {self.name} {state} commits={self.commits} changes={self.changes}>"


def _runs(batch: Iterable[_Change]) -> list[tuple[str, list[Sequence[object]]]]:
    """The batch's statements in order, each run of one SQL text gathered: one `executemany`
    costs less than a call per statement (the acks of one message, many tasks' attempts)."""
    runs: list[tuple[str, list[Sequence[object]]]] = []
    for change in batch:
        for sql, parameters in change.statements:
            if runs and runs[-1][0] == sql:
                runs[-1][1].append(parameters)
            else:
                runs.append((sql, [parameters]))
    return runs


def _read(path: Path, fsync: bool) -> tuple[sqlite3.Connection, list[TaskRow], list[ResultRow]]:
    try:
        # The connection moves to the journal's thread; only one thread uses it at a time.
        connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the store {path}: {exc}") from exc
    try:
        mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StoreError(f"the store {path} cannot use write-ahead logging (got {mode})")
        connection.execute(f"PRAGMA synchronous = {'FULL' if fsync else 'NORMAL'}")
        _migrate(connection, path)
        tasks: list[TaskRow] = connection.execute(
            "SELECT task_id, client_id, sequence, created_at, state, started_at, finished_at,"
            " attempts, crashes, spec, trace_context FROM tasks ORDER BY rowid"
        ).fetchall()
        results: list[ResultRow] = connection.execute(
            "SELECT task_id, result, acked FROM results ORDER BY completion"
        ).fetchall()
    except sqlite3.Error as exc:
        connection.close()
        raise StoreError(f"cannot open the store {path}: {exc}") from exc
    except BaseException:
        connection.close()
        raise
    return connection, tasks, results


def _migrate(connection: sqlite3.Connection, path: Path) -> None:
    version = connection.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the store {path} has schema version {version}, newer than this aiproc reads"
            f" ({SCHEMA_VERSION}): upgrade aiproc, or point data_dir elsewhere"
        )
    if version == SCHEMA_VERSION:
        return
    if connection.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
        raise StoreError(f"{path} is a SQLite database but not an aiproc store")
    connection.executescript(f"BEGIN;{_SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;")
