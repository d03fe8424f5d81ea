"""API keys against a real server on port 0: credentials, roles and tenant isolation."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from aiproc.server.app import AiprocServer
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc
from aiproc.v1 import task_pb2
from tests.security.support import config_with, make_key
from tests.support import GatedProvider, ServerFactory

Metadata = Sequence[tuple[str, str]]

ALICE = make_key("alice-app", "alice")
BOB = make_key("bob-app", "bob")
OPS = make_key("ops", "ops", role="admin")
KEYS = (ALICE, BOB, OPS)
MISSING = "missing credentials: send metadata authorization: Bearer <token>"


@pytest.fixture
async def channel() -> AsyncIterator[Callable[[AiprocServer], grpc.aio.Channel]]:
    channels: list[grpc.aio.Channel] = []

    def open_(server: AiprocServer) -> grpc.aio.Channel:
        channels.append(grpc.aio.insecure_channel(server.address))
        return channels[-1]

    yield open_
    for each in channels:
        await each.close()


def queue_request(url: str = "https://example.com/a") -> pb.QueueTaskRequest:
    return pb.QueueTaskRequest(task=task_pb2.TaskSpec(url=url, content="Some text. Two."))


async def refused(call: object) -> grpc.aio.AioRpcError:
    """The error a call (awaitable or stream) ends with; fails if it succeeds."""
    try:
        if isinstance(call, grpc.aio.UnaryStreamCall | grpc.aio.StreamStreamCall):
            async with asyncio.timeout(5):
                await call.read()
                await call.read()
        else:
            await call  # type: ignore[misc]
    except grpc.aio.AioRpcError as error:
        return error
    pytest.fail(f"the call succeeded: {call!r}")


def every_call(
    stub: pb_grpc.ProcessorServiceAsyncStub, metadata: Metadata
) -> dict[str, Callable[[], object]]:
    """How to start one call of each ProcessorService method, unary and streaming."""
    task_id = "0" * 32
    return {
        "QueueTask": lambda: stub.QueueTask(queue_request(), metadata=metadata, timeout=5),
        "GetTask": lambda: stub.GetTask(
            pb.GetTaskRequest(task_id=task_id), metadata=metadata, timeout=5
        ),
        "CancelTask": lambda: stub.CancelTask(
            pb.CancelTaskRequest(task_id=task_id), metadata=metadata, timeout=5
        ),
        "ListTasks": lambda: stub.ListTasks(pb.ListTasksRequest(), metadata=metadata, timeout=5),
        "RequeueTask": lambda: stub.RequeueTask(
            pb.RequeueTaskRequest(task_id=task_id), metadata=metadata, timeout=5
        ),
        "Stats": lambda: stub.Stats(pb.StatsRequest(), metadata=metadata, timeout=5),
        "WatchEvents": lambda: stub.WatchEvents(
            pb.WatchEventsRequest(), metadata=metadata, timeout=5
        ),
        "StreamResults": lambda: subscribe(stub, metadata, all_tasks=True),
    }


def subscribe(
    stub: pb_grpc.ProcessorServiceAsyncStub, metadata: Metadata, **subscription: object
) -> grpc.aio.StreamStreamCall[pb.StreamResultsRequest, pb.StreamResultsResponse]:
    """A StreamResults call with one Subscribe, kept open until cancelled."""

    async def requests() -> AsyncIterator[pb.StreamResultsRequest]:
        yield pb.StreamResultsRequest(subscribe=pb.Subscribe(**subscription))  # type: ignore[arg-type]
        await asyncio.Event().wait()

    return stub.StreamResults(requests(), metadata=metadata, timeout=5)


async def test_every_rpc_without_a_token_is_unauthenticated_and_health_stays_open(
    start_server: ServerFactory, channel: Callable[[AiprocServer], grpc.aio.Channel]
) -> None:
    server = await start_server(config_with(KEYS))
    connection = channel(server)
    calls = every_call(pb_grpc.ProcessorServiceStub(connection), ())
    assert set(calls) == set(pb.DESCRIPTOR.services_by_name["ProcessorService"].methods_by_name)
    for name, start in calls.items():
        error = await refused(start())
        assert error.code() == grpc.StatusCode.UNAUTHENTICATED, name
        assert error.details() == MISSING, name
    health = health_pb2_grpc.HealthStub(connection)
    answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    # Reflection (server.reflection = true by default) lists the API without a token.
    reflection = reflection_pb2_grpc.ServerReflectionStub(connection)
    listing = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
    )
    names = [s.name async for r in listing for s in r.list_services_response.service]
    assert "aiproc.v1.ProcessorService" in names


async def test_a_wrong_token_is_unauthenticated_and_never_echoed(
    start_server: ServerFactory,
    channel: Callable[[AiprocServer], grpc.aio.Channel],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_server(config_with(KEYS))
    stub = pb_grpc.ProcessorServiceStub(channel(server))
    stranger = make_key("stranger", "alice")  # well formed, but not in the config
    caplog.set_level(logging.DEBUG)
    for metadata in (stranger.metadata, (("authorization", f"Basic {stranger.token}"),)):
        for name, start in every_call(stub, metadata).items():
            error = await refused(start())
            assert error.code() == grpc.StatusCode.UNAUTHENTICATED, name
            assert stranger.token[7:15] not in (error.details() or ""), name
    assert "invalid credentials" in caplog.text  # refusals are logged...
    assert stranger.token[7:15] not in caplog.text  # ...without the token


async def test_each_role_gets_what_it_may(
    start_server: ServerFactory, channel: Callable[[AiprocServer], grpc.aio.Channel]
) -> None:
    server = await start_server(config_with(KEYS))
    stub = pb_grpc.ProcessorServiceStub(channel(server))
    queued = await stub.QueueTask(queue_request(), metadata=ALICE.metadata, timeout=5)
    listed = await stub.ListTasks(pb.ListTasksRequest(), metadata=ALICE.metadata, timeout=5)
    assert [t.task_id for t in listed.tasks] == [queued.task_id]
    error = await refused(every_call(stub, ALICE.metadata)["WatchEvents"]())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (error.details() or "").startswith("WatchEvents needs role admin")
    assert "role is client" in (error.details() or "")
    await stub.QueueTask(queue_request(), metadata=BOB.metadata, timeout=5)
    stats = await stub.Stats(pb.StatsRequest(), metadata=OPS.metadata, timeout=5)
    assert stats.counters.queued == 2
    assert stats.total_workers > 0
    assert [p.name for p in stats.providers] == ["offline"]
    # A client's Stats are its own tenant's figures, and nothing of the others or the providers.
    own = await stub.Stats(pb.StatsRequest(), metadata=ALICE.metadata, timeout=5)
    assert own.counters.queued == 1
    assert (own.total_workers, list(own.providers), list(own.event_counts)) == (0, [], [])
    assert own.queue_capacity == stats.queue_capacity
    events = stub.WatchEvents(pb.WatchEventsRequest(), metadata=OPS.metadata, timeout=5)
    await events.initial_metadata()  # the admin is watching
    events.cancel()


async def test_tenants_never_see_each_others_tasks(
    start_server: ServerFactory, channel: Callable[[AiprocServer], grpc.aio.Channel]
) -> None:
    provider = GatedProvider()
    server = await start_server(config_with(KEYS), providers=[provider])
    stub = pb_grpc.ProcessorServiceStub(channel(server))
    alices = await stub.QueueTask(queue_request(), metadata=ALICE.metadata, timeout=5)
    provider.gate.set()
    # Alice's result is kept, unacknowledged, for Alice alone.
    mine = subscribe(stub, ALICE.metadata, task_ids=[alices.task_id])
    assert (await mine.read()).result.task_id == alices.task_id
    mine.cancel()

    theirs = pb.GetTaskRequest(task_id=alices.task_id)
    for call in (
        stub.GetTask(theirs, metadata=BOB.metadata, timeout=5),
        stub.CancelTask(pb.CancelTaskRequest(task_id=alices.task_id), metadata=BOB.metadata),
        stub.RequeueTask(pb.RequeueTaskRequest(task_id=alices.task_id), metadata=BOB.metadata),
        subscribe(stub, BOB.metadata, task_ids=[alices.task_id]),
    ):
        error = await refused(call)
        assert error.code() == grpc.StatusCode.NOT_FOUND
    listed = await stub.ListTasks(pb.ListTasksRequest(), metadata=BOB.metadata, timeout=5)
    assert list(listed.tasks) == []

    # Bob's all-tasks stream sends the results pending for Bob, oldest first, on
    # subscribing: Alice's older one would come first if it leaked.
    bobs = await stub.QueueTask(queue_request(), metadata=BOB.metadata, timeout=5)
    done = subscribe(stub, BOB.metadata, task_ids=[bobs.task_id])
    assert (await done.read()).result.task_id == bobs.task_id
    done.cancel()
    bobs_stream = subscribe(stub, BOB.metadata, all_tasks=True)
    assert (await bobs_stream.read()).result.task_id == bobs.task_id
    bobs_stream.cancel()
    # Alice's task is still there, untouched, for Alice.
    again = await stub.GetTask(theirs, metadata=ALICE.metadata, timeout=5)
    assert again.task.state == task_pb2.TASK_STATE_SUCCEEDED


async def test_client_id_metadata_is_for_admins_acting_for_a_tenant(
    start_server: ServerFactory, channel: Callable[[AiprocServer], grpc.aio.Channel]
) -> None:
    server = await start_server(config_with(KEYS))
    stub = pb_grpc.ProcessorServiceStub(channel(server))
    alices = await stub.QueueTask(queue_request(), metadata=ALICE.metadata, timeout=5)
    same = (*ALICE.metadata, ("aiproc-client-id", "alice"))
    await stub.GetTask(pb.GetTaskRequest(task_id=alices.task_id), metadata=same, timeout=5)
    error = await refused(
        stub.ListTasks(
            pb.ListTasksRequest(), metadata=(*BOB.metadata, ("aiproc-client-id", "alice"))
        )
    )
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "own tenant 'bob'" in (error.details() or "")
    for_alice = (*OPS.metadata, ("aiproc-client-id", "alice"))
    listed = await stub.ListTasks(pb.ListTasksRequest(), metadata=for_alice, timeout=5)
    assert [t.task_id for t in listed.tasks] == [alices.task_id]
    own = await stub.ListTasks(pb.ListTasksRequest(), metadata=OPS.metadata, timeout=5)
    assert list(own.tasks) == []  # the admin's own tenant is "ops"


async def test_concurrent_calls_of_different_tenants_keep_their_own_identity(
    start_server: ServerFactory, channel: Callable[[AiprocServer], grpc.aio.Channel]
) -> None:
    provider = GatedProvider()
    server = await start_server(config_with(KEYS), providers=[provider])
    stub = pb_grpc.ProcessorServiceStub(channel(server))
    keys = [ALICE, BOB] * 25
    queued = await asyncio.gather(
        *(stub.QueueTask(queue_request(), metadata=k.metadata, timeout=5) for k in keys)
    )
    for key in (ALICE, BOB):
        listed = await stub.ListTasks(pb.ListTasksRequest(), metadata=key.metadata, timeout=5)
        expected = {q.task_id for q, k in zip(queued, keys, strict=True) if k is key}
        assert {t.task_id for t in listed.tasks} == expected
    provider.gate.set()
