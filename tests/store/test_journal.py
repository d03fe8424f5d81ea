"""The journal's changes nobody waits for: committed in order with the rest, failures not lost,
travelling with the next awaited change, and committed on their own after a short delay."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aiproc.server.core.errors import StoreError
from aiproc.server.store.journal import Journal
from tests.support import refuse_task_inserts

INSERT = (
    "INSERT INTO tasks (task_id, client_id, sequence, created_at, state, attempts, crashes,"
    " spec, trace_context) VALUES (?, 'alice', ?, 0, 'queued', 0, 0, '{}', '{}')"
)


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "aiproc.db"


@pytest.fixture
async def journal(path: Path) -> AsyncIterator[Journal]:
    opened, _, _ = await Journal.open(path, fsync=False)
    yield opened
    await opened.close()


def ids_in(path: Path) -> list[str]:
    with contextlib.closing(sqlite3.connect(path)) as other:
        return [row[0] for row in other.execute("SELECT task_id FROM tasks ORDER BY rowid")]


async def test_changes_queued_behind_commit_in_order_before_a_later_awaited_one(
    journal: Journal, path: Path
) -> None:
    journal.write_behind([(INSERT, ("t1", 1))])
    journal.write_behind([(INSERT, ("t2", 2))])
    await journal.write([(INSERT, ("t3", 3))])

    assert ids_in(path) == ["t1", "t2", "t3"]
    assert journal.changes == 3


async def test_a_change_queued_behind_is_committed_by_close(journal: Journal, path: Path) -> None:
    journal.write_behind([(INSERT, ("t1", 1))])
    await journal.close()

    assert ids_in(path) == ["t1"]


async def test_a_failed_change_queued_behind_fails_the_next_write(
    journal: Journal, path: Path
) -> None:
    refuse_task_inserts(path)
    journal.write_behind([(INSERT, ("t1", 1))])

    with pytest.raises(StoreError, match="failed"):
        await journal.write(())
    with pytest.raises(StoreError, match="accepts no more changes"):
        journal.write_behind([(INSERT, ("t2", 2))])


async def test_a_closed_journal_refuses_changes_queued_behind(journal: Journal) -> None:
    await journal.close()

    with pytest.raises(StoreError, match="closed"):
        journal.write_behind([(INSERT, ("t1", 1))])


async def test_changes_made_in_one_turn_of_the_loop_share_one_commit(
    journal: Journal, path: Path
) -> None:
    for n in range(100):
        journal.write_behind([(INSERT, (f"t{n}", n))])
    # Awaited directly, it is queued in this same turn, before the hand-over runs.
    await journal.write([(INSERT, ("last", 100))])

    assert journal.commits == 1
    assert journal.changes == 101
    assert len(ids_in(path)) == 101


async def test_changes_queued_behind_wait_for_the_next_awaited_one(path: Path) -> None:
    journal, _, _ = await Journal.open(path, fsync=False, behind_delay=3600.0)
    try:
        journal.write_behind([(INSERT, ("t1", 1))])
        # Turns of the loop pass (no time is waited): nothing is handed to the thread yet.
        for _ in range(5):
            await asyncio.sleep(0)
        journal.write_behind([(INSERT, ("t2", 2))])
        await journal.write([(INSERT, ("t3", 3))])

        assert journal.commits == 1
        assert ids_in(path) == ["t1", "t2", "t3"]
    finally:
        await journal.close()


async def test_a_change_queued_behind_alone_is_committed_after_the_delay(path: Path) -> None:
    journal, _, _ = await Journal.open(path, fsync=False, behind_delay=0.01)
    try:
        journal.write_behind([(INSERT, ("t1", 1))])
        # Polled with a deadline: the writer thread counts the commit, and no event tells.
        deadline = time.monotonic() + 10
        while journal.commits == 0 and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.005)

        assert journal.commits == 1
        assert ids_in(path) == ["t1"]
    finally:
        await journal.close()


async def test_runs_of_one_statement_keep_their_place_among_the_others(
    journal: Journal, path: Path
) -> None:
    attempts = "UPDATE tasks SET attempts = ? WHERE task_id = ?"
    journal.write_behind([(INSERT, ("t1", 1)), (attempts, (1, "t1"))])
    journal.write_behind([(attempts, (2, "t1")), (attempts, (3, "t1"))])
    journal.write_behind([(INSERT, ("t2", 2)), (attempts, (4, "t2"))])
    await journal.write([(attempts, (5, "t1"))])

    with contextlib.closing(sqlite3.connect(path)) as other:
        rows = other.execute("SELECT task_id, attempts FROM tasks ORDER BY rowid").fetchall()
    assert rows == [("t1", 5), ("t2", 4)]
    assert journal.commits == 1
