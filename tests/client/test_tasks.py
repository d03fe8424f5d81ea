"""`list_tasks` and `requeue`, async and blocking, against a real in-process server."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from aiproc.client import (
    AsyncClient,
    Client,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Priority,
    TaskState,
    Unavailable,
)
from aiproc.client._retry import RetryPolicy
from aiproc.server.app import AiprocServer
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import task_pb2
from tests.client.test_sync_client import server_in_thread
from tests.support import GatedProvider, ServerFactory, make_config

TEXT = "Widgets are small devices. They make work easier. Everyone likes widgets."
FAST = {"rate_limit_rps": 10_000.0, "rate_limit_burst": 100}
QUICK_RETRY = RetryPolicy(attempts=4, initial_backoff=0.001, max_backoff=0.002)


@pytest.fixture
async def clients() -> AsyncIterator[Callable[..., AsyncClient]]:
    """Makes clients to a server; closes them all at the end of the test."""
    made: list[AsyncClient] = []

    def make(server: AiprocServer | str, **kwargs: object) -> AsyncClient:
        target = server if isinstance(server, str) else server.address
        client = AsyncClient(target, **kwargs)  # type: ignore[arg-type]
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


async def test_list_tasks_filters_by_state_limits_and_keeps_to_the_client_id(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    provider = GatedProvider()
    config = make_config(processor={"num_workers": 1, **FAST})
    server = await start_server(config, providers=[provider])
    alice, bob = clients(server, client_id="alice"), clients(server, client_id="bob")
    running = await alice.queue("https://example.com/running", TEXT, priority="low")
    await provider.wait_calls(1)  # the only worker is busy: the others wait
    waiting = await alice.queue("https://example.com/waiting", TEXT, priority="high")
    cancelled = await alice.queue("https://example.com/cancelled", TEXT)
    assert await alice.cancel(cancelled.task_id) is TaskState.CANCELLED

    everything = await alice.list_tasks()
    assert [t.task_id for t in everything] == [
        running.task_id,
        waiting.task_id,
        cancelled.task_id,
    ]
    assert [t.state for t in everything] == [
        TaskState.RUNNING,
        TaskState.QUEUED,
        TaskState.CANCELLED,
    ]
    assert [t.spec.url for t in everything] == [
        "https://example.com/running",
        "https://example.com/waiting",
        "https://example.com/cancelled",
    ]
    assert [t.spec.priority for t in everything] == [Priority.LOW, Priority.HIGH, Priority.NORMAL]
    assert all(t.created_at is not None for t in everything)
    assert everything[2].result is not None  # a finished task carries its result
    assert everything[1].result is None

    assert [t.task_id for t in await alice.list_tasks(state="queued")] == [waiting.task_id]
    assert [t.task_id for t in await alice.list_tasks(state=TaskState.RUNNING)] == [running.task_id]
    assert [t.task_id for t in await alice.list_tasks(state="cancelled")] == [cancelled.task_id]
    assert await alice.list_tasks(state=TaskState.SUCCEEDED) == []
    assert await alice.list_tasks(state=TaskState.UNSPECIFIED) == everything
    assert [t.task_id for t in await alice.list_tasks(limit=2)] == [
        running.task_id,
        waiting.task_id,
    ]
    assert [t.task_id for t in await alice.list_tasks(state="cancelled", limit=1)] == [
        cancelled.task_id
    ]

    assert await bob.list_tasks() == []
    assert await bob.list_tasks(state="queued") == []

    provider.gate.set()
    for task in (running, waiting):
        assert (await alice.wait(task.task_id, timeout=10)).success
    succeeded = await alice.list_tasks(state="succeeded")
    assert [t.task_id for t in succeeded] == [running.task_id, waiting.task_id]
    assert await alice.list_tasks(state="queued") == []


async def test_list_tasks_refuses_bad_limits(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    client = clients(await start_server())
    queued = await client.queue("https://example.com/a", TEXT)
    assert [t.task_id for t in await client.list_tasks(limit=0)] == [queued.task_id]  # default
    assert len(await client.list_tasks(limit=10_000)) == 1
    with pytest.raises(InvalidArgument) as caught:
        await client.list_tasks(limit=10_001)
    assert "limit" in caught.value.message
    with pytest.raises(ValueError, match="limit"):
        await client.list_tasks(limit=-1)
    with pytest.raises(ValueError, match="nonsense"):
        await client.list_tasks(state="nonsense")


async def test_requeue_runs_a_finished_task_again(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    provider = GatedProvider()
    provider.gate.set()  # every call answers at once
    server = await start_server(make_config(processor=FAST), providers=[provider])
    client = clients(server, client_id="again")
    queued = await client.queue("https://example.com/twice", TEXT)
    first = await client.wait(queued.task_id, timeout=10)
    assert first.state is TaskState.SUCCEEDED

    assert await client.requeue(queued.task_id) is TaskState.QUEUED
    second = await client.wait(queued.task_id, timeout=10)
    assert second.task_id == queued.task_id
    assert second.state is TaskState.SUCCEEDED
    assert second.enhanced_content == "done: URL: https://example.com/twice"
    assert provider.calls == ["https://example.com/twice"] * 2
    assert first.completed_at is not None
    assert second.completed_at is not None
    assert second.completed_at >= first.completed_at
    info = await client.get(queued.task_id)
    assert info.state is TaskState.SUCCEEDED
    assert info.result == second


async def test_requeue_runs_a_cancelled_task(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    provider = GatedProvider()
    config = make_config(processor={"num_workers": 1, **FAST})
    client = clients(await start_server(config, providers=[provider]))
    blocker = await client.queue("https://example.com/blocker", TEXT)
    await provider.wait_calls(1)
    victim = await client.queue("https://example.com/victim", TEXT)
    assert await client.cancel(victim.task_id) is TaskState.CANCELLED
    assert (await client.wait(victim.task_id, timeout=10)).state is TaskState.CANCELLED

    assert await client.requeue(victim.task_id) is TaskState.QUEUED
    assert (await client.get(victim.task_id)).state is TaskState.QUEUED
    provider.gate.set()
    result = await client.wait(victim.task_id, timeout=10)
    assert result.state is TaskState.SUCCEEDED
    assert provider.calls == ["https://example.com/blocker", "https://example.com/victim"]
    assert (await client.wait(blocker.task_id, timeout=10)).success


async def test_requeue_of_a_live_or_unknown_task_is_refused(
    start_server: ServerFactory, clients: Callable[..., AsyncClient]
) -> None:
    provider = GatedProvider()
    config = make_config(processor={"num_workers": 1, **FAST})
    server = await start_server(config, providers=[provider])
    alice, bob = clients(server, client_id="alice"), clients(server, client_id="bob")
    running = await alice.queue("https://example.com/running", TEXT)
    await provider.wait_calls(1)
    waiting = await alice.queue("https://example.com/waiting", TEXT)

    with pytest.raises(FailedPrecondition) as caught:
        await alice.requeue(waiting.task_id)
    assert caught.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert "queued" in caught.value.message
    with pytest.raises(FailedPrecondition) as caught:
        await alice.requeue(running.task_id)
    assert "running" in caught.value.message
    with pytest.raises(NotFound):
        await bob.requeue(running.task_id)  # another identity's task does not exist for bob
    with pytest.raises(NotFound):
        await alice.requeue("0" * 32)
    states = [t.state for t in await alice.list_tasks()]
    assert states == [TaskState.RUNNING, TaskState.QUEUED]  # nothing changed
    provider.gate.set()


class Restarting:
    """A ProcessorService that answers UNAVAILABLE to the first `failures` calls of
    ListTasks and RequeueTask, as a restarting server would; counts the calls."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: Counter[str] = Counter()

    async def _maybe_fail(
        self, method: str, context: grpc.aio.ServicerContext[object, object]
    ) -> None:
        self.calls[method] += 1
        if self.calls[method] <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "restarting")

    async def list_tasks(
        self, request: pb.ListTasksRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.ListTasksResponse:
        await self._maybe_fail("ListTasks", context)
        task = task_pb2.Task(task_id="t1", state=task_pb2.TASK_STATE_QUEUED)
        return pb.ListTasksResponse(tasks=[task])

    async def requeue_task(
        self, request: pb.RequeueTaskRequest, context: grpc.aio.ServicerContext[object, object]
    ) -> pb.RequeueTaskResponse:
        await self._maybe_fail("RequeueTask", context)
        return pb.RequeueTaskResponse(state=task_pb2.TASK_STATE_QUEUED)

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            "aiproc.v1.ProcessorService",
            {
                "ListTasks": grpc.unary_unary_rpc_method_handler(
                    self.list_tasks,
                    request_deserializer=pb.ListTasksRequest.FromString,
                    response_serializer=pb.ListTasksResponse.SerializeToString,
                ),
                "RequeueTask": grpc.unary_unary_rpc_method_handler(
                    self.requeue_task,
                    request_deserializer=pb.RequeueTaskRequest.FromString,
                    response_serializer=pb.RequeueTaskResponse.SerializeToString,
                ),
            },
        )


@pytest.fixture
async def restarting_server() -> AsyncIterator[tuple[str, Restarting]]:
    servicer = Restarting(failures=1)
    server = grpc.aio.server(handlers=[servicer.handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", servicer
    await server.stop(grace=None)


async def test_list_tasks_is_retried_on_unavailable_but_requeue_is_not(
    restarting_server: tuple[str, Restarting], clients: Callable[..., AsyncClient]
) -> None:
    address, servicer = restarting_server
    client = clients(address, retry=QUICK_RETRY)
    listed = await client.list_tasks()
    assert [(t.task_id, t.state) for t in listed] == [("t1", TaskState.QUEUED)]
    assert servicer.calls["ListTasks"] == 2
    with pytest.raises(Unavailable):
        await client.requeue("t1")
    assert servicer.calls["RequeueTask"] == 1


def test_the_sync_client_lists_and_requeues() -> None:
    with (
        server_in_thread(make_config(processor=FAST)) as server,
        Client(server.address, client_id="sync-tasks") as client,
    ):
        queued = client.queue("https://example.com/sync", TEXT)
        first = client.wait(queued.task_id, timeout=10)
        listed = client.list_tasks(state="succeeded", limit=5)
        assert [t.task_id for t in listed] == [queued.task_id]
        assert listed[0].result == first
        assert client.requeue(queued.task_id) is TaskState.QUEUED
        again = client.wait(queued.task_id, timeout=10)
        assert again.success
        assert [t.state for t in client.list_tasks()] == [TaskState.SUCCEEDED]
        with pytest.raises(NotFound):
            client.requeue("0" * 32)
