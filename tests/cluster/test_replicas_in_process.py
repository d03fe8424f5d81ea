"""Two replicas in this process sharing one Redis, over real gRPC: what crosses between them.

A task can be queued on one replica and run on the other; whatever the caller
does or reads on one (results, progress, cancels, task lookups, idempotency,
provider pauses and breakers) must hold for work on the other. A replica whose
worker should stay out of the way is kept busy with a task its provider holds.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
import redis.asyncio as redis
from google.protobuf.duration_pb2 import Duration

from aiproc.server.app import AiprocServer
from aiproc.server.cluster.keys import RedisKeys
from aiproc.server.config import Config, ProviderConfig
from aiproc.server.core.errors import StoreError
from aiproc.server.core.models import TokenUsage
from aiproc.server.fakes.openai_server import FakeOpenAIServer, FakeReply
from aiproc.server.providers.base import Completion, CompletionRequest
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc
from aiproc.v1 import task_pb2
from tests.api.test_resilience_end_to_end import EventLog
from tests.api.test_server import Stream, queue_request
from tests.redis_support import REDIS_URL
from tests.support import ServerFactory, make_config

Connect = Callable[[AiprocServer], "pb_grpc.ProcessorServiceAsyncStub"]

UNREACHABLE = "redis://127.0.0.1:1/0"


class Calls:
    """Provider calls in the order they began, as (provider, url); providers may share one."""

    def __init__(self) -> None:
        self.made: list[tuple[str, str]] = []
        self._changed = asyncio.Condition()

    async def add(self, provider: str, url: str) -> None:
        async with self._changed:
            self.made.append((provider, url))
            self._changed.notify_all()

    async def wait(self, n: int, within: float = 5.0) -> None:
        """Returns once `n` calls have begun."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: len(self.made) >= n)

    def urls(self, provider: str | None = None) -> list[str]:
        return [url for name, url in self.made if provider in (None, name)]


class HeldProvider:
    """A provider whose calls wait for its gate (or for their own URL to be let through);
    it notes the calls cancelled while waiting."""

    kind = "test"
    model = "held-model"
    context_window = 8192

    def __init__(self, name: str, calls: Calls | None = None) -> None:
        self.name = name
        self.gate = asyncio.Event()
        """Once set, every call answers."""
        self.calls = calls if calls is not None else Calls()
        self.cancelled: list[str] = []
        self.was_cancelled = asyncio.Event()
        self._let_through: dict[str, asyncio.Event] = {}

    def let_through(self, url: str) -> None:
        """The call for `url` answers (now, or when it comes), whatever the gate says."""
        self._pass(url).set()

    def _pass(self, url: str) -> asyncio.Event:
        return self._let_through.setdefault(url, asyncio.Event())

    async def complete(self, request: CompletionRequest) -> Completion:
        url = request.messages[-1].content.splitlines()[0].removeprefix("URL: ")
        await self.calls.add(self.name, url)
        waits = [asyncio.create_task(self.gate.wait()), asyncio.create_task(self._pass(url).wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self.cancelled.append(url)
            self.was_cancelled.set()
            raise
        finally:
            for wait in waits:
                wait.cancel()
        return Completion(f"{self.name} did {url}", self.model, TokenUsage(3, 2), "stop")

    async def check_health(self, timeout: float) -> None:  # noqa: ASYNC109
        return None

    async def aclose(self) -> None:
        return None


def replica_config(prefix: str, **sections: dict[str, object]) -> Config:
    """A replica on the shared Redis under `prefix`: one worker, no health checks, no
    global rate limit to speak of; plus the config `sections` given."""
    return make_config(
        server={"store": REDIS_URL, "redis_prefix": prefix, "lease_ttl": 1.0},
        processor={"num_workers": 1, "rate_limit_rps": 10_000.0, "rate_limit_burst": 1000},
        health={"enabled": False},
        **sections,
    )


async def busy_replica(
    start_server: ServerFactory, stub_of: Connect, config: Config, held: HeldProvider
) -> tuple[AiprocServer, pb_grpc.ProcessorServiceAsyncStub]:
    """A replica whose only worker is running a task that `held` holds until its gate opens.

    Start it while the other replicas' workers are busy (or before them), so its own worker
    is the one that takes the task.
    """
    server = await start_server(config, providers=[held])
    stub = stub_of(server)
    before = len(held.calls.made)
    await stub.QueueTask(queue_request(f"https://e.com/blocker-{held.name}"), timeout=5)
    await held.calls.wait(before + 1)
    return server, stub


async def queue(stub: pb_grpc.ProcessorServiceAsyncStub, url: str, **fields: object) -> str:
    reply = await stub.QueueTask(queue_request(url, **fields), timeout=5)
    assert reply.state == task_pb2.TASK_STATE_QUEUED
    return reply.task_id


async def progress_until_result(
    stream: Stream, task_id: str, within: float = 5.0
) -> tuple[list[int], task_pb2.TaskResult]:
    """The kinds of the progress events about `task_id` that came before its result, and the
    result; items about other tasks are skipped."""
    kinds: list[int] = []
    async with asyncio.timeout(within):
        while True:
            response = await stream.call.read()
            assert isinstance(response, pb.StreamResultsResponse), "stream ended early"
            if response.WhichOneof("kind") == "result":
                if response.result.task_id == task_id:
                    return kinds, response.result
            elif response.progress.task_id == task_id:
                kinds.append(response.progress.kind)


async def test_a_task_queued_on_a_runs_on_b_and_its_progress_and_result_reach_a(
    redis_prefix: str, start_server: ServerFactory, channel_to: Connect
) -> None:
    held_a, provider_b = HeldProvider("a"), HeldProvider("b")
    provider_b.gate.set()  # answers at once
    _, stub_a = await busy_replica(start_server, channel_to, replica_config(redis_prefix), held_a)
    await start_server(replica_config(redis_prefix), providers=[provider_b])
    try:
        stream = Stream(stub_a)
        stream.subscribe(all_tasks=True, progress=True)
        # Progress is live only: a first result proves the subscription is in place.
        warmup = await queue(stub_a, "https://e.com/warmup")
        await progress_until_result(stream, warmup)

        task_id = await queue(stub_a, "https://e.com/task")
        kinds, result = await progress_until_result(stream, task_id)
        stream.close()
        assert result.success, result.error.message
        assert result.provider == "b"
        assert result.enhanced_content == "b did https://e.com/task"
        # QUEUED comes from a, which accepted the task; STARTED only from b, which ran it.
        assert kinds == [pb.PROGRESS_KIND_QUEUED, pb.PROGRESS_KIND_STARTED]
        assert provider_b.calls.urls() == ["https://e.com/warmup", "https://e.com/task"]
    finally:
        held_a.gate.set()


async def test_cancel_on_a_of_a_task_running_on_b_stops_the_call_on_b(
    redis_prefix: str, start_server: ServerFactory, channel_to: Connect
) -> None:
    held_a, held_b = HeldProvider("a"), HeldProvider("b")
    _, stub_a = await busy_replica(start_server, channel_to, replica_config(redis_prefix), held_a)
    b = await start_server(replica_config(redis_prefix), providers=[held_b])
    stub_b = channel_to(b)
    try:
        task_id = await queue(stub_a, "https://e.com/doomed")
        await held_b.calls.wait(1)  # running on b

        reply = await stub_a.CancelTask(pb.CancelTaskRequest(task_id=task_id), timeout=5)
        assert reply.state == task_pb2.TASK_STATE_CANCELLED
        stream = Stream(stub_a)
        stream.subscribe(task_id)
        (result,) = await stream.results(1)
        assert result.state == task_pb2.TASK_STATE_CANCELLED
        assert result.error.code == task_pb2.ERROR_CODE_CANCELLED
        # b's provider call was cancelled, not left to finish.
        async with asyncio.timeout(5):
            await held_b.was_cancelled.wait()
        assert held_b.cancelled == ["https://e.com/doomed"]

        # b's only worker is free again: it runs the next task (a's is still busy).
        held_b.gate.set()
        after = await queue(stub_a, "https://e.com/after")
        stream.subscribe(after)
        (done,) = await stream.results(1)
        stream.close()
        assert done.success, done.error.message
        assert done.provider == "b"
        # b's handler did not overwrite the recorded cancel when its call ended.
        got = await stub_b.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=5)
        assert got.task.state == task_pb2.TASK_STATE_CANCELLED
        assert got.task.result.error.code == task_pb2.ERROR_CODE_CANCELLED
    finally:
        held_a.gate.set()


async def test_a_cancel_on_a_racing_a_claim_on_b_still_stops_the_call_on_b(
    redis_prefix: str,
    start_server: ServerFactory,
    channel_to: Connect,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held_a, held_b = HeldProvider("a"), HeldProvider("b")
    a, stub_a = await busy_replica(start_server, channel_to, replica_config(redis_prefix), held_a)
    await busy_replica(start_server, channel_to, replica_config(redis_prefix), held_b)
    try:
        task_id = await queue(stub_a, "https://e.com/raced")
        # a finds the task waiting; before a records the cancel, b claims and starts it.
        queue_a = a.processor.queue
        withdraw = queue_a.withdraw

        async def withdraw_while_b_claims(withdrawn: str) -> bool:
            waiting = await withdraw(withdrawn)
            held_b.let_through("https://e.com/blocker-b")
            await held_b.calls.wait(2)
            return waiting

        monkeypatch.setattr(queue_a, "withdraw", withdraw_while_b_claims)
        reply = await stub_a.CancelTask(pb.CancelTaskRequest(task_id=task_id), timeout=5)
        assert reply.state == task_pb2.TASK_STATE_CANCELLED
        assert held_b.calls.urls()[1:] == ["https://e.com/raced"]
        # b stops the call instead of running a cancelled task to its end.
        async with asyncio.timeout(5):
            await held_b.was_cancelled.wait()
        assert held_b.cancelled == ["https://e.com/raced"]
    finally:
        held_a.gate.set()
        held_b.gate.set()


async def test_priority_then_fifo_holds_across_replicas(
    redis_prefix: str, start_server: ServerFactory, channel_to: Connect
) -> None:
    calls = Calls()
    held_a, held_b = HeldProvider("a", calls), HeldProvider("b", calls)
    _, stub_a = await busy_replica(start_server, channel_to, replica_config(redis_prefix), held_a)
    _, stub_b = await busy_replica(start_server, channel_to, replica_config(redis_prefix), held_b)
    plan = [
        ("low-1", task_pb2.PRIORITY_LOW),
        ("normal-1", task_pb2.PRIORITY_UNSPECIFIED),
        ("critical-1", task_pb2.PRIORITY_CRITICAL),
        ("high-1", task_pb2.PRIORITY_HIGH),
        ("normal-2", task_pb2.PRIORITY_NORMAL),
        ("critical-2", task_pb2.PRIORITY_CRITICAL),
        ("low-2", task_pb2.PRIORITY_LOW),
        ("high-2", task_pb2.PRIORITY_HIGH),
    ]
    try:
        for n, (name, priority) in enumerate(plan):
            await queue(stub_a if n % 2 else stub_b, f"https://e.com/{name}", priority=priority)
        # One worker runs them all: two would start their calls in whichever order their
        # claims happened to get there, while one shows the order of the shared queue.
        held_a.gate.set()
        await calls.wait(2 + len(plan))
        assert [url.rsplit("/", 1)[1] for url in calls.urls("a")[1:]] == [
            "critical-1",
            "critical-2",
            "high-1",
            "high-2",
            "normal-1",
            "normal-2",
            "low-1",
            "low-2",
        ]
        assert calls.urls("b") == ["https://e.com/blocker-b"]
    finally:
        held_a.gate.set()
        held_b.gate.set()


def with_fake(config: Config, fake: FakeOpenAIServer) -> Config:
    """`config` with one provider, "shared", answered by `fake`."""
    provider = ProviderConfig(name="shared", kind="openai", base_url=fake.base_url)
    return replace(config, providers=(provider,))


async def test_a_429_with_retry_after_on_b_pauses_the_provider_on_a(
    redis_prefix: str, start_server: ServerFactory, channel_to: Connect
) -> None:
    held = HeldProvider("shared")  # a's "shared": busy, so b makes the call
    _, stub_a = await busy_replica(start_server, channel_to, replica_config(redis_prefix), held)
    async with FakeOpenAIServer() as fake:
        b = await start_server(with_fake(replica_config(redis_prefix), fake))
        stub_b = channel_to(b)
        log = EventLog(stub_a)
        try:
            await log.watching()
            fake.enqueue(FakeReply(status=429, headers={"Retry-After": "30"}))
            await queue(stub_b, "https://e.com/limited", timeout=Duration(seconds=5))

            event = await log.wait_for(pb.PROVIDER_EVENT_KIND_PAUSED, "shared", within=5)
            assert "another replica" in event.reason
            stats = await stub_a.Stats(pb.StatsRequest(), timeout=5)
            (provider,) = stats.providers
            assert provider.name == "shared"
            assert provider.state == "paused"
            assert provider.paused_for.ToTimedelta().total_seconds() > 0
            assert provider.rate_limited == 0  # a made no call that was limited: b did
            assert len([r for r in fake.requests if r.path.endswith("/chat/completions")]) == 1
        finally:
            await log.close()
            held.gate.set()


async def test_a_breaker_opening_on_b_opens_it_on_a(
    redis_prefix: str, start_server: ServerFactory, channel_to: Connect
) -> None:
    breaker = {"preset": "strict", "failure_threshold": 1, "recovery_timeout": "30s"}
    config = replica_config(redis_prefix, circuit_breaker=breaker)
    held = HeldProvider("shared")
    _, stub_a = await busy_replica(start_server, channel_to, config, held)
    async with FakeOpenAIServer() as fake:
        b = await start_server(with_fake(config, fake))
        stub_b = channel_to(b)
        log = EventLog(stub_a)
        try:
            await log.watching()
            fake.enqueue(FakeReply(status=500))
            task_id = await queue(stub_b, "https://e.com/failing", max_retries=0)
            stream = Stream(stub_b)
            stream.subscribe(task_id)
            (result,) = await stream.results(1)
            stream.close()
            assert not result.success

            await log.wait_for(pb.PROVIDER_EVENT_KIND_BREAKER_OPENED, "shared", within=5)
            stats = await stub_a.Stats(pb.StatsRequest(), timeout=5)
            (provider,) = stats.providers
            assert provider.breaker_state == pb.BREAKER_STATE_OPEN
            assert provider.failures == 0  # a's own calls did not open it
        finally:
            await log.close()
            held.gate.set()


async def test_a_replica_stopping_hands_its_running_task_back_and_loses_no_queued_task(
    redis_prefix: str, start_server: ServerFactory, channel_to: Connect
) -> None:
    calls = Calls()
    held_a, held_b = HeldProvider("a", calls), HeldProvider("b", calls)
    _, stub_a = await busy_replica(start_server, channel_to, replica_config(redis_prefix), held_a)
    b = await start_server(replica_config(redis_prefix), providers=[held_b])
    stub_b = channel_to(b)
    try:
        running = await queue(stub_b, "https://e.com/running")
        await calls.wait(2)  # b runs it: a's worker is busy
        assert calls.urls("b") == ["https://e.com/running"]
        waiting = [await queue(stub_b, f"https://e.com/waiting-{n}") for n in (1, 2)]

        await b.stop(grace=0.2)  # b's call never ends by itself
        assert held_b.cancelled == ["https://e.com/running"]
        # All three wait in Redis, in their order, for any replica.
        client = redis.Redis.from_url(REDIS_URL, decode_responses=True)
        try:
            keys = RedisKeys(redis_prefix)
            assert await client.zrange(keys.queue, 0, -1) == [running, *waiting]
            for task_id in (running, *waiting):
                assert await client.hget(keys.task(task_id), "state") == "queued"
                assert await client.zscore(keys.leases, task_id) is None  # b holds nothing
        finally:
            await client.aclose()

        stream = Stream(stub_a)
        stream.subscribe(running, *waiting)
        held_a.gate.set()
        results = {r.task_id: r for r in await stream.results(3)}
        stream.close()
        assert set(results) == {running, *waiting}
        for result in results.values():
            assert result.success, result.error.message
            assert result.provider == "a"
        assert calls.urls("a")[1:] == [
            "https://e.com/running",
            "https://e.com/waiting-1",
            "https://e.com/waiting-2",
        ]
    finally:
        held_a.gate.set()


async def test_tasks_queued_on_b_are_seen_requeued_and_deduplicated_on_a(
    redis_prefix: str, start_server: ServerFactory, channel_to: Connect
) -> None:
    calls = Calls()
    held_a, held_b = HeldProvider("a", calls), HeldProvider("b", calls)
    _, stub_a = await busy_replica(start_server, channel_to, replica_config(redis_prefix), held_a)
    _, stub_b = await busy_replica(start_server, channel_to, replica_config(redis_prefix), held_b)
    try:
        queued = await stub_b.QueueTask(
            queue_request("https://e.com/shared", idempotency_key="k-1"), timeout=5
        )
        assert not queued.deduplicated
        task_id = queued.task_id

        got = await stub_a.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=5)
        assert got.task.state == task_pb2.TASK_STATE_QUEUED
        assert got.task.spec.url == "https://e.com/shared"
        listed = await stub_a.ListTasks(
            pb.ListTasksRequest(state=task_pb2.TASK_STATE_QUEUED), timeout=5
        )
        assert [t.task_id for t in listed.tasks] == [task_id]
        # Another client sees nothing of it, on either replica.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub_a.GetTask(
                pb.GetTaskRequest(task_id=task_id),
                metadata=(("aiproc-client-id", "someone-else"),),
                timeout=5,
            )
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND

        repeat = await stub_a.QueueTask(
            queue_request("https://e.com/shared", idempotency_key="k-1"), timeout=5
        )
        assert repeat.deduplicated
        assert repeat.task_id == task_id

        stream = Stream(stub_b)
        stream.subscribe(task_id)
        held_a.gate.set()
        held_b.gate.set()
        (first,) = await stream.results(1)
        assert first.success, first.error.message

        # Requeued through a, it runs again; its new result reaches the stream on b, as a
        # stream on the replica that requeued it would get it, acknowledged or not.
        requeued = await stub_a.RequeueTask(pb.RequeueTaskRequest(task_id=task_id), timeout=5)
        assert requeued.state == task_pb2.TASK_STATE_QUEUED
        (second,) = await stream.results(1)
        stream.close()
        assert second.success, second.error.message
        assert second.completed_at.ToNanoseconds() > first.completed_at.ToNanoseconds()
        got = await stub_b.GetTask(pb.GetTaskRequest(task_id=task_id), timeout=5)
        assert got.task.state == task_pb2.TASK_STATE_SUCCEEDED
        assert calls.urls().count("https://e.com/shared") == 2
    finally:
        held_a.gate.set()
        held_b.gate.set()


async def test_an_unreachable_redis_stops_start_with_one_line_naming_it() -> None:
    config = make_config(server={"store": UNREACHABLE})
    with pytest.raises(StoreError) as caught:
        await AiprocServer.start(config, providers=[HeldProvider("a")])
    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "\n" not in message


def test_serve_with_an_unreachable_redis_exits_with_one_line_and_no_traceback(
    tmp_path: Path,
) -> None:
    config = tmp_path / "aiproc.toml"
    config.write_text(
        f'[server]\nstore = "{UNREACHABLE}"\nlisten = "127.0.0.1:0"\n', encoding="utf-8"
    )
    done = subprocess.run(
        [sys.executable, "-m", "aiproc.server.cli.main", "serve", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("AIPROC_")},
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    last = done.stderr.splitlines()[-1]
    assert last.startswith("aiproc: error: cannot serve: cannot reach Redis at 127.0.0.1:1")
    assert done.stdout == ""
