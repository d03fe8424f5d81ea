"""`aiproc submit-batch`: queue a JSONL file of tasks, pipelined, and write one result per line.

Up to --concurrency QueueTask calls are in flight while one StreamResults
call receives the results; each id is subscribed as soon as it is queued,
and each result is acknowledged only after its line is written. Subscribes
and acks go in batches: all the ids that came while the previous message was
being sent go in one message.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TextIO

import grpc

from aiproc.client import (
    AiprocClientError,
    AsyncClient,
    InvalidArgument,
    NotFound,
    QueuedTask,
    QueueFull,
    ResultStream,
    TaskResult,
    Unavailable,
    to_json,
)
from aiproc.client.stream import CLOSE_GRACE
from aiproc.server.cli.common import (
    EXIT_FAILURE,
    CliError,
    client_from,
    connection_options,
)
from aiproc.server.cli.jsonl import BadLine, BatchItem, count_tasks, read_items
from aiproc.server.cli.progress import ProgressBar, Tally
from aiproc.server.cli.submit import failure_line, finished_result
from aiproc.server.core.batching import IdBatcher

DEFAULT_CONCURRENCY = 64
FIRST_PAUSE = 0.05
"""Seconds a queue-full line waits for a result before retrying anyway, at first."""
LONGEST_PAUSE = 2.0
IDS_PER_MESSAGE = 1000
"""Task ids in one Subscribe or Ack at most (the server takes up to 10,000)."""
LINGER = 0.01
"""Seconds an id waits for others to share its Subscribe or Ack: each message costs
both sides far more than an id in it, and results come too fast to wait alone."""


def add_parser(commands: argparse._SubParsersAction[Any], env: Mapping[str, str]) -> None:
    parser = commands.add_parser(
        "submit-batch",
        parents=[connection_options(env)],
        help="queue every task of a JSONL file and write their results",
        description="Reads one task per line, as {url, content, priority?, timeout?, "
        "instructions?, model?, idempotency_key?, metadata?}, and writes one TaskResult per "
        "line in protobuf's JSON mapping, in the order the results arrive.",
    )
    parser.add_argument("input", metavar="IN.jsonl", help="the tasks, one JSON object a line")
    parser.add_argument(
        "output", metavar="OUT.jsonl", nargs="?", help="where results go (default stdout)"
    )
    parser.add_argument(
        "--concurrency",
        metavar="N",
        type=_positive_int,
        default=DEFAULT_CONCURRENCY,
        help=f"QueueTask calls in flight at once (default {DEFAULT_CONCURRENCY})",
    )
    parser.set_defaults(run=run)


class BatchRunner:
    """Queues every item and writes every result; `run` returns the final tally."""

    def __init__(
        self,
        client: AsyncClient,
        items: Iterable[BatchItem | BadLine],
        out: TextIO,
        progress: ProgressBar,
        *,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self._client = client
        self._items = items
        self._out = out
        self._progress = progress
        self._tally = progress.tally
        self._slots = asyncio.Semaphore(concurrency)
        self._pending: dict[str, list[BatchItem]] = {}
        self._room = asyncio.Condition()
        self._started = 0
        self._input_done = False
        self._finished = asyncio.Event()
        self._stream: ResultStream | None = None
        self._subscribes = IdBatcher(self._send_subscribes, IDS_PER_MESSAGE, linger=LINGER)
        self._acks = IdBatcher(self._send_acks, IDS_PER_MESSAGE, linger=LINGER)

    def __repr__(self) -> str:
        return f"<BatchRunner [{self._started} started | {len(self._pending)} awaited]>"

    async def run(self) -> Tally:
        async with self._client.stream() as stream:
            self._stream = stream
            try:
                async with asyncio.TaskGroup() as tasks:
                    receiving = tasks.create_task(self._receive(stream))
                    sending = [
                        tasks.create_task(self._subscribes.run()),
                        tasks.create_task(self._acks.run()),
                    ]
                    await self._queue_all(tasks)
                    await self._finished.wait()
                    self._subscribes.close()
                    self._acks.close()
                    await asyncio.gather(*sending)  # every ack sent before half-closing
                    # Half-closing lets the server take the last acks and end the call,
                    # which ends the receiver; cancelling it could lose those acks.
                    await stream.done_writing()
                    await asyncio.wait([receiving], timeout=CLOSE_GRACE)
                    receiving.cancel()
            except BaseExceptionGroup as group:
                raise _reportable(group) from None
        return self._tally

    async def _queue_all(self, tasks: asyncio.TaskGroup) -> None:
        for item in self._items:
            self._started += 1
            if isinstance(item, BadLine):
                self._bad(item.line, f"bad input: {item.reason}")
                continue
            await self._slots.acquire()
            tasks.create_task(self._queue(item))
            self._changed()
        self._input_done = True
        self._changed()

    async def _queue(self, item: BatchItem) -> None:
        try:
            queued = await self._queue_with_room(item)
        except InvalidArgument as exc:
            self._bad(item.line, f"rejected: {exc}")
            return
        finally:
            self._slots.release()
        if queued.deduplicated and queued.state.is_terminal:
            try:
                result = await finished_result(self._client, queued)
            except (NotFound, CliError) as exc:
                self._bad(item.line, f"deduplicated task {queued.task_id}: {exc}")
                return
            self._write(result, [item])
            self._acks.add([queued.task_id])
            return
        # Registered before subscribing: the result may arrive right away.
        waiting = self._pending.setdefault(queued.task_id, [])
        waiting.append(item)
        if len(waiting) == 1:
            self._subscribes.add([queued.task_id])

    async def _queue_with_room(self, item: BatchItem) -> QueuedTask:
        pause = FIRST_PAUSE
        while True:
            try:
                return await self._client.queue(
                    item.url,
                    item.content,
                    priority=item.priority,
                    task_timeout=item.task_timeout,
                    instructions=item.instructions,
                    model=item.model,
                    idempotency_key=item.idempotency_key,
                    metadata=item.metadata,
                )
            except QueueFull:
                await self._wait_for_room(pause)
                pause = min(pause * 2, LONGEST_PAUSE)

    async def _wait_for_room(self, seconds: float) -> None:
        """Returns when a result arrives (a task left the server's queue) or after `seconds`,
        since the queue may be full of other clients' tasks."""
        async with self._room:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(seconds):
                    await self._room.wait()

    async def _receive(self, stream: ResultStream) -> None:
        async for item in stream:
            if not isinstance(item, TaskResult):
                continue
            items = self._pending.pop(item.task_id, None)
            if items is None:
                continue  # delivered again before our ack landed; already written
            self._write(item, items)
            self._acks.add([item.task_id])
            async with self._room:
                self._room.notify(1)
        if not self._finished.is_set():
            raise Unavailable(
                grpc.StatusCode.UNAVAILABLE,
                "the server ended the result stream before the batch did",
            )

    def _write(self, result: TaskResult, items: list[BatchItem]) -> None:
        line = to_json(result) + "\n"
        for item in items:
            self._out.write(line)
            if result.success:
                self._tally.succeeded += 1
            else:
                self._tally.failed += 1
                self._progress.note(f"aiproc: line {item.line}: {failure_line(result)}")
        self._changed()

    async def _send_subscribes(self, task_ids: list[str]) -> None:
        await self._subscribed().subscribe(task_ids)

    async def _send_acks(self, task_ids: list[str]) -> None:
        self._out.flush()  # acknowledged only once their lines are out of this process
        await self._subscribed().ack(task_ids)

    def _bad(self, line: int, reason: str) -> None:
        self._tally.bad += 1
        self._progress.note(f"aiproc: line {line}: {reason}")
        self._changed()

    def _changed(self) -> None:
        self._tally.in_flight = self._started - self._tally.done
        self._progress.update()
        if self._input_done and self._tally.done == self._started:
            self._finished.set()

    def _subscribed(self) -> ResultStream:
        if self._stream is None:
            raise RuntimeError("the batch's result stream is not open")
        return self._stream


def _reportable(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error to report for a failed batch: the first one the CLI knows how to say."""
    for exc in _leaves(group):
        if isinstance(exc, AiprocClientError | CliError):
            return exc
    return group


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def run(args: argparse.Namespace) -> int:
    try:
        with open(args.input, encoding="utf-8") as counting:
            total = count_tasks(counting)
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {args.input}: {exc}") from None
    with contextlib.ExitStack() as files:
        source = files.enter_context(open(args.input, encoding="utf-8"))
        out = sys.stdout
        if args.output is not None:
            try:
                out = files.enter_context(open(args.output, "w", encoding="utf-8"))
            except OSError as exc:
                raise CliError(f"cannot write {args.output}: {exc}") from None
        progress = ProgressBar(Tally(total), sys.stderr, live=sys.stderr.isatty())
        tally = asyncio.run(_run_batch(args, read_items(source), out, progress))
    progress.finish()
    return EXIT_FAILURE if tally.failed or tally.bad else 0


async def _run_batch(
    args: argparse.Namespace,
    items: Iterable[BatchItem | BadLine],
    out: TextIO,
    progress: ProgressBar,
) -> Tally:
    async with client_from(args) as client:
        runner = BatchRunner(client, items, out, progress, concurrency=args.concurrency)
        return await runner.run()
