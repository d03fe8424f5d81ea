"""The submit-batch pipeline in-process against a real server: queue-full retries, dedupe,
batched subscribes and acks."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Collection, Iterable
from typing import Any

import pytest

from aiproc.client import AsyncClient, QueuedTask, ResultStream
from aiproc.server.cli.batch import BatchRunner
from aiproc.server.cli.jsonl import BadLine, BatchItem, read_items
from aiproc.server.cli.progress import ProgressBar, Tally
from tests.support import GatedProvider, ServerFactory, make_config

TEXT = "Widgets are small devices. They make work easier. Everyone likes widgets."
FAST = {"rate_limit_rps": 10_000.0, "rate_limit_burst": 100}


@pytest.fixture
async def client_for() -> AsyncIterator[list[AsyncClient]]:
    made: list[AsyncClient] = []
    yield made
    for client in made:
        await client.close()


def items(count: int, **extra: object) -> list[BatchItem | BadLine]:
    lines = [
        json.dumps({"url": f"https://example.com/{n}", "content": TEXT, **extra})
        for n in range(count)
    ]
    return list(read_items(lines))


def runner(
    client: AsyncClient, work: list[BatchItem | BadLine], out: io.StringIO, concurrency: int = 8
) -> BatchRunner:
    progress = ProgressBar(Tally(total=len(work)), io.StringIO(), live=False)
    return BatchRunner(client, work, out, progress, concurrency=concurrency)


async def test_a_full_queue_is_waited_out_and_every_line_gets_its_result(
    start_server: ServerFactory, client_for: list[AsyncClient]
) -> None:
    provider = GatedProvider()
    config = make_config(processor={"num_workers": 1, "queue_size": 2, **FAST})
    server = await start_server(config, providers=[provider])
    client = AsyncClient(server.address)
    client_for.append(client)
    out = io.StringIO()
    batch = asyncio.create_task(runner(client, items(12), out).run())
    await provider.wait_calls(1)
    async with asyncio.timeout(5):  # polls until the queue filled up and refused the runner
        while True:
            if (await client.stats()).counters.rejected > 0:
                break
            await asyncio.sleep(0.01)
    assert not batch.done()
    provider.gate.set()
    async with asyncio.timeout(20):
        tally = await batch
    assert (tally.succeeded, tally.failed, tally.bad, tally.in_flight) == (12, 0, 0, 0)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert sorted(line["url"] for line in lines) == sorted(
        f"https://example.com/{n}" for n in range(12)
    )
    assert len({line["taskId"] for line in lines}) == 12
    assert (await client.stats()).undelivered_results == 0  # every result was acked


async def test_repeated_keys_share_a_task_and_finished_repeats_come_from_get_task(
    start_server: ServerFactory, client_for: list[AsyncClient]
) -> None:
    server = await start_server(make_config(processor=FAST))
    client = AsyncClient(server.address)
    client_for.append(client)
    earlier = await client.queue("https://example.com/old", TEXT, idempotency_key="old")
    await client.wait(earlier.task_id, timeout=10)  # finished and acknowledged
    work = [
        *items(2, idempotency_key="same"),
        *items(1, idempotency_key="old"),
        BadLine(99, "bad input: not valid JSON"),
    ]
    out = io.StringIO()
    async with asyncio.timeout(20):
        tally = await runner(client, work, out).run()
    assert (tally.succeeded, tally.failed, tally.bad) == (3, 0, 1)
    ids = [json.loads(line)["taskId"] for line in out.getvalue().splitlines()]
    assert len(ids) == 3
    assert ids.count(earlier.task_id) == 1
    assert len(set(ids)) == 2  # the two "same" lines got one task


async def test_rejected_lines_are_counted_not_fatal(
    start_server: ServerFactory, client_for: list[AsyncClient]
) -> None:
    server = await start_server(make_config(processor=FAST))
    client = AsyncClient(server.address)
    client_for.append(client)
    work = [*items(3), *list(read_items(['{"url": "not-a-url", "content": "x"}']))]
    out = io.StringIO()
    async with asyncio.timeout(20):
        tally = await runner(client, work, out, concurrency=2).run()
    assert (tally.succeeded, tally.bad) == (3, 1)
    assert len(out.getvalue().splitlines()) == 3


async def test_nothing_to_do_finishes_at_once(
    start_server: ServerFactory, client_for: list[AsyncClient]
) -> None:
    server = await start_server()
    client = AsyncClient(server.address)
    client_for.append(client)
    async with asyncio.timeout(5):
        tally = await runner(client, [BadLine(1, "bad")], io.StringIO()).run()
    assert (tally.done, tally.bad) == (1, 1)


class FlushedOut(io.StringIO):
    """Output that remembers what had been flushed."""

    def __init__(self) -> None:
        super().__init__()
        self.flushed = ""

    def flush(self) -> None:
        super().flush()
        self.flushed = self.getvalue()


async def test_a_result_is_acknowledged_only_once_its_line_is_flushed(
    start_server: ServerFactory, client_for: list[AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(make_config(processor=FAST))
    client = AsyncClient(server.address)
    client_for.append(client)
    out = FlushedOut()
    store = server.processor.store
    write_ack = store.ack
    unflushed: list[str] = []

    async def checked_ack(client_id: str, task_ids: Collection[str]) -> int:
        unflushed.extend(t for t in task_ids if t not in out.flushed)
        return await write_ack(client_id, task_ids)

    monkeypatch.setattr(store, "ack", checked_ack)
    async with asyncio.timeout(20):
        tally = await runner(client, items(20), out).run()
    assert tally.succeeded == 20
    assert unflushed == []
    assert (await client.stats()).undelivered_results == 0


class WatchedOut(io.StringIO):
    """Output that says when it has had as many lines as expected."""

    def __init__(self, lines: int) -> None:
        super().__init__()
        self._lines = lines
        self.all_written = asyncio.Event()

    def write(self, text: str) -> int:
        written = super().write(text)
        self._lines -= text.count("\n")
        if self._lines <= 0:
            self.all_written.set()
        return written


async def test_results_that_come_during_an_ack_are_acknowledged_together(
    start_server: ServerFactory, client_for: list[AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(make_config(processor=FAST))
    client = AsyncClient(server.address)
    client_for.append(client)
    out = WatchedOut(lines=12)
    acks: list[list[str]] = []
    send_ack = ResultStream.ack

    async def first_ack_waits(stream: ResultStream, task_ids: Iterable[str]) -> None:
        acks.append(list(task_ids))
        if len(acks) == 1:
            await out.all_written.wait()
        await send_ack(stream, acks[-1])

    monkeypatch.setattr(ResultStream, "ack", first_ack_waits)
    batch = asyncio.create_task(runner(client, items(12), out).run())
    async with asyncio.timeout(20):
        tally = await batch
    assert tally.succeeded == 12
    assert len(acks) <= 2  # the first, and everything that came while it was held
    written = [json.loads(line)["taskId"] for line in out.getvalue().splitlines()]
    assert sorted(task_id for batch_ids in acks for task_id in batch_ids) == sorted(written)
    assert (await client.stats()).undelivered_results == 0


async def test_ids_queued_during_a_subscribe_are_subscribed_together(
    start_server: ServerFactory, client_for: list[AsyncClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    server = await start_server(make_config(processor=FAST))
    client = AsyncClient(server.address)
    client_for.append(client)
    subscribes: list[list[str]] = []
    queued: list[str] = []
    all_queued = asyncio.Event()
    send_subscribe = ResultStream.subscribe
    queue = AsyncClient.queue

    async def counted_queue(self: AsyncClient, *args: Any, **kwargs: Any) -> QueuedTask:
        task = await queue(self, *args, **kwargs)
        queued.append(task.task_id)
        if len(queued) == 12:
            all_queued.set()
        return task

    async def first_subscribe_waits(stream: ResultStream, task_ids: Iterable[str]) -> None:
        subscribes.append(list(task_ids))
        if len(subscribes) == 1:
            await all_queued.wait()
        await send_subscribe(stream, subscribes[-1])

    monkeypatch.setattr(AsyncClient, "queue", counted_queue)
    monkeypatch.setattr(ResultStream, "subscribe", first_subscribe_waits)
    async with asyncio.timeout(20):
        tally = await runner(client, items(12), io.StringIO(), concurrency=12).run()
    assert tally.succeeded == 12
    assert len(subscribes) <= 2  # the first, and every id queued while it was held
    assert sorted(task_id for ids in subscribes for task_id in ids) == sorted(queued)
