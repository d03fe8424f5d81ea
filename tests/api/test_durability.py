"""Nothing lost: restarts, crashes (a real kill -9) and dead letters with the durable stores."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from aiproc.client import AsyncClient, ProgressEvent, ProgressKind, TaskResult
from aiproc.server.core.models import ErrorCode, Task, TaskSpec, TaskState
from aiproc.server.fakes.openai_server import FakeOpenAIServer
from aiproc.server.store.lock import DataDirInUse
from aiproc.server.store.sqlite import SqliteStore
from tests.processes import served
from tests.redis_support import REDIS_URL, delete_prefix, unique_prefix
from tests.support import GatedProvider, ServerFactory, make_config, sqlite_write_locked


def sqlite_config(data_dir: Path, **processor: object) -> object:
    return make_config(
        server={"store": "sqlite", "data_dir": str(data_dir)},
        processor={"rate_limit_rps": 10_000.0, **processor},
        health={"enabled": False},
    )


async def test_a_graceful_restart_keeps_queued_and_interrupted_tasks(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    blocked = GatedProvider()
    first = await start_server(sqlite_config(tmp_path, num_workers=1), providers=[blocked])
    async with AsyncClient(first.address) as client:
        ids = [(await client.queue(f"https://e.com/{n}", "Text. More.")).task_id for n in range(5)]
    await blocked.wait_calls(1)  # one running, four queued
    await first.stop(grace=0.05)  # the running one is cut short

    second = await start_server(sqlite_config(tmp_path))  # offline provider this time
    async with AsyncClient(second.address) as client:
        results = [await client.wait(task_id, timeout=10) for task_id in ids]
    assert [r.task_id for r in results] == ids
    assert all(r.success for r in results), [r.error for r in results]


async def test_a_task_running_through_max_crashes_is_dead_lettered(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    store = await SqliteStore.open(tmp_path / "aiproc.db", retention=3600)
    spec = TaskSpec(url="https://e.com/poison", content="Text that kills workers.")
    await store.put(Task("a" * 32, "default", spec, created_at=1.0, sequence=1))
    for _ in range(2):  # running during two crashes already
        await store.mark_running("a" * 32, 2.0)
        await store.requeue("a" * 32, crashed=True)
    await store.mark_running("a" * 32, 3.0)  # and during a third
    await store.close()

    server = await start_server(sqlite_config(tmp_path))  # max_crashes = 3
    async with AsyncClient(server.address) as client:
        result = await client.wait("a" * 32, timeout=10)
        assert result.state == "failed"
        assert result.error is not None
        assert result.error.code == ErrorCode.CRASHED.value
        queued = await client.queue("https://e.com/next", "Work goes on. Fine.")
        assert (await client.wait(queued.task_id, timeout=10)).success


async def test_a_result_is_delivered_while_the_file_is_locked_and_kept_once_it_is_free(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    """A worker's result is published before its commit, which follows once SQLite can write."""
    gated = GatedProvider()
    server = await start_server(sqlite_config(tmp_path), providers=[gated])
    async with (
        AsyncClient(server.address) as client,
        client.stream(all_tasks=True, include_progress=True) as stream,
    ):
        queued = await client.queue("https://e.com/1", "Text. More.")
        items = aiter(stream)
        async with asyncio.timeout(5):
            # The stream is subscribed once it carries the task's progress: the result
            # can only reach it by being published, not found stored when it subscribes.
            while not isinstance(await anext(items), ProgressEvent):
                pass
        await gated.wait_calls(1)
        with sqlite_write_locked(tmp_path / "aiproc.db"):  # the store's commits wait
            gated.gate.set()
            async with asyncio.timeout(3):
                delivered = await anext(items)
                while not isinstance(delivered, TaskResult):
                    delivered = await anext(items)
        await stream.ack([delivered.task_id])
    assert delivered.success
    await server.stop(grace=1.0)

    store = await SqliteStore.open(tmp_path / "aiproc.db", retention=3600)
    try:
        kept = await store.get(queued.task_id)
        assert kept is not None
        assert kept.state is TaskState.SUCCEEDED
    finally:
        await store.close()


async def test_a_task_starts_while_queue_task_commits_and_its_events_come_in_order(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    gated = GatedProvider()
    server = await start_server(sqlite_config(tmp_path), providers=[gated])
    async with (
        AsyncClient(server.address) as client,
        client.stream(all_tasks=True, include_progress=True) as stream,
    ):
        with sqlite_write_locked(tmp_path / "aiproc.db"):  # the admission's commit waits
            queueing = asyncio.create_task(client.queue("https://e.com/1", "Text. More."))
            await gated.wait_calls(1)  # started, and the provider called, before the commit
            assert not queueing.done()
        queued = await asyncio.wait_for(queueing, 5)
        assert queued.state == "queued"  # as accepted, though a worker runs it already
        gated.gate.set()
        kinds: list[object] = []
        async with asyncio.timeout(5):
            async for item in stream:
                kinds.append(item.kind if isinstance(item, ProgressEvent) else "result")
                if isinstance(item, TaskResult):
                    await stream.ack([item.task_id])
                    break
    assert kinds == [ProgressKind.QUEUED, ProgressKind.STARTED, "result"]
    assert item.task_id == queued.task_id


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_kill_9_mid_run_loses_no_task_and_no_result(tmp_path: Path, store: str) -> None:
    total = 120
    prefix = unique_prefix()
    # With Redis the restarted server finds the dead one's running tasks when
    # their leases run out: lease_ttl after the kill.
    server = (
        f'[server]\nstore = "{REDIS_URL}"\nredis_prefix = "{prefix}"\nlease_ttl = "1s"\n'
        if store == "redis"
        else ""
    )
    async with FakeOpenAIServer(latency=0.05) as fake:
        config = tmp_path / "aiproc.toml"
        config.write_text(
            server
            + f"""
[processor]
num_workers = 8
rate_limit_rps = 10000
rate_limit_burst = 100

[health]
enabled = false

[[providers]]
name = "fake"
kind = "openai"
base_url = "{fake.base_url}"
model = "gpt-4o-mini"
""",
            encoding="utf-8",
        )
        data_dir, log = tmp_path / "data", tmp_path / "server.log"
        delivered: list[str] = []
        accepted: list[str] = []
        async with served(config, data_dir, log) as (pid, address):
            async with AsyncClient(address) as client:
                for n in range(total):
                    queued = await client.queue(
                        f"https://e.com/{n}", f"Page {n}. Some text.", idempotency_key=f"k{n}"
                    )
                    accepted.append(queued.task_id)
                async with client.stream(all_tasks=True) as stream:
                    async for item in stream:
                        delivered.append(item.task_id)  # type: ignore[union-attr]
                        await stream.ack([item.task_id])  # type: ignore[union-attr]
                        if len(delivered) == total // 3:
                            break
            os.kill(pid, signal.SIGKILL)  # mid-run: tasks queued, running and finished
        assert len(set(accepted)) == total

        async with served(config, data_dir, log) as (_, address), AsyncClient(address) as client:
            again: list[str] = []
            async with client.stream(all_tasks=True) as stream:
                async with asyncio.timeout(60):
                    async for item in stream:
                        again.append(item.task_id)  # type: ignore[union-attr]
                        await stream.ack([item.task_id])  # type: ignore[union-attr]
                        if set(delivered) | set(again) >= set(accepted):
                            break
            assert len(again) == len(set(again)), "a result came twice in one stream"
            assert set(delivered) | set(again) == set(accepted)
            for task_id in accepted:
                info = await client.get(task_id)
                assert info.state == TaskState.SUCCEEDED.value, info
            repeat = await client.queue(
                "https://e.com/0", "Page 0. Some text.", idempotency_key="k0"
            )
            assert repeat.task_id == accepted[0]
            assert repeat.deduplicated
    await delete_prefix(prefix)


async def test_a_second_server_on_the_same_data_dir_is_refused(
    start_server: ServerFactory, tmp_path: Path
) -> None:
    await start_server(sqlite_config(tmp_path))
    with pytest.raises(DataDirInUse, match="in use by another aiproc process"):
        await start_server(sqlite_config(tmp_path))
