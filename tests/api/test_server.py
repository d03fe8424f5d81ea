"""The gRPC API over a real socket: ordering, limits, validation, cancel, streams, shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aiproc.server.app import AiprocServer
from aiproc.server.config import ProviderConfig
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc
from aiproc.v1 import task_pb2
from tests.support import GatedProvider, ServerFactory, make_config

Connect = Callable[[AiprocServer], "pb_grpc.ProcessorServiceAsyncStub"]


def queue_request(url: str = "https://example.com/a", **fields: object) -> pb.QueueTaskRequest:
    spec: dict[str, object] = {"url": url, "content": "Some page text. It has sentences."}
    spec.update(fields)
    return pb.QueueTaskRequest(task=task_pb2.TaskSpec(**spec))  # type: ignore[arg-type]


class Stream:
    """One StreamResults call, driven from the test."""

    def __init__(
        self, stub: pb_grpc.ProcessorServiceAsyncStub, client_id: str = "", deadline: float = 20
    ) -> None:
        self._outbox: asyncio.Queue[pb.StreamResultsRequest | None] = asyncio.Queue()
        metadata = (("aiproc-client-id", client_id),) if client_id else None
        self.call = stub.StreamResults(self._requests(), metadata=metadata, timeout=deadline)

    async def _requests(self) -> AsyncIterator[pb.StreamResultsRequest]:
        while (message := await self._outbox.get()) is not None:
            yield message

    def subscribe(self, *ids: str, all_tasks: bool = False, progress: bool = False) -> None:
        subscribe = pb.Subscribe(task_ids=ids, all_tasks=all_tasks, include_progress=progress)
        self._outbox.put_nowait(pb.StreamResultsRequest(subscribe=subscribe))

    def ack(self, *ids: str) -> None:
        self._outbox.put_nowait(pb.StreamResultsRequest(ack=pb.Ack(task_ids=ids)))

    def close(self) -> None:
        self._outbox.put_nowait(None)

    async def results(self, n: int, within: float = 10.0) -> list[task_pb2.TaskResult]:
        found: list[task_pb2.TaskResult] = []
        async with asyncio.timeout(within):
            while len(found) < n:
                response = await self.call.read()
                assert response is not grpc.aio.EOF, "stream ended early"
                if response.WhichOneof("kind") == "result":
                    found.append(response.result)
        return found


async def test_offline_provider_enhances_content_end_to_end(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    server = await start_server()
    stub = channel_to(server)
    queued = await stub.QueueTask(queue_request(), timeout=5)
    assert queued.state == task_pb2.TASK_STATE_QUEUED
    stream = Stream(stub)
    stream.subscribe(queued.task_id)
    (result,) = await stream.results(1)
    stream.close()
    assert result.task_id == queued.task_id
    assert result.success
    assert result.state == task_pb2.TASK_STATE_SUCCEEDED
    assert "Offline extractive summary" in result.enhanced_content
    assert result.provider == "offline"
    assert result.attempts == 1
    assert result.url == "https://example.com/a"


async def test_priority_order_and_fifo_within_a_level(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    provider = GatedProvider()
    server = await start_server(make_config(processor={"num_workers": 1}), providers=[provider])
    stub = channel_to(server)
    await stub.QueueTask(queue_request("https://e.com/blocker"), timeout=5)
    await provider.wait_calls(1)  # the only worker is now busy
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
    for name, priority in plan:
        await stub.QueueTask(queue_request(f"https://e.com/{name}", priority=priority), timeout=5)
    provider.gate.set()
    await provider.wait_calls(1 + len(plan))
    assert [c.rsplit("/", 1)[1] for c in provider.calls[1:]] == [
        "critical-1",
        "critical-2",
        "high-1",
        "high-2",
        "normal-1",
        "normal-2",
        "low-1",
        "low-2",
    ]


async def test_full_queue_answers_resource_exhausted(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    provider = GatedProvider()
    config = make_config(processor={"num_workers": 1, "queue_size": 2})
    server = await start_server(config, providers=[provider])
    stub = channel_to(server)
    await stub.QueueTask(queue_request(), timeout=5)
    await provider.wait_calls(1)
    await stub.QueueTask(queue_request(), timeout=5)
    await stub.QueueTask(queue_request(), timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.QueueTask(queue_request(), timeout=5)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "queue is full" in (caught.value.details() or "")
    stats = await stub.Stats(pb.StatsRequest(), timeout=5)
    assert stats.queue_size == 2
    assert stats.counters.rejected == 1
    provider.gate.set()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.QueueTaskRequest(), "task"),
        (queue_request(content=""), "task.content"),
        (queue_request(content="   \n\t"), "task.content"),
        (queue_request(content="x" * 2000), "task.content"),
        (queue_request(url=""), "task.url"),
        (queue_request(url="not a url"), "task.url"),
        (queue_request(url="ftp://example.com/file"), "task.url"),
        (queue_request(url="https://"), "task.url"),
        (queue_request(url="http://example.com:99999/"), "task.url"),
        (queue_request(priority=42), "task.priority"),
        (queue_request(timeout=Duration(seconds=-1)), "task.timeout"),
        (queue_request(metadata={f"k{n}": "v" for n in range(65)}), "task.metadata"),
        (queue_request(model="m" * 500), "task.model"),
    ],
)
async def test_invalid_requests_name_the_field(
    start_server: ServerFactory,
    channel_to: Connect,
    request_: pb.QueueTaskRequest,
    field: str,
) -> None:
    server = await start_server(make_config(server={"max_content_bytes": 1000}))
    stub = channel_to(server)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.QueueTask(request_, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}:")
    stats = await stub.Stats(pb.StatsRequest(), timeout=5)
    assert stats.counters.queued == 0
    assert stats.counters.rejected == 1


@pytest.mark.parametrize(
    ("call", "field"),
    [
        ("GetTask", "task_id"),
        ("CancelTask", "task_id"),
    ],
)
async def test_malformed_and_unknown_task_ids(
    start_server: ServerFactory, channel_to: Connect, call: str, field: str
) -> None:
    server = await start_server()
    stub = channel_to(server)
    method = getattr(stub, call)
    request_type = pb.GetTaskRequest if call == "GetTask" else pb.CancelTaskRequest
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(request_type(task_id="../etc/passwd"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"{field}:")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(request_type(task_id="0" * 32), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_invalid_client_id_metadata_is_rejected(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    server = await start_server()
    stub = channel_to(server)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.QueueTask(queue_request(), metadata=(("aiproc-client-id", "a b/c"),), timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "aiproc-client-id" in (caught.value.details() or "")


async def test_task_timeout_fails_the_task_with_code_timeout(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    provider = GatedProvider()  # never opened: the task can only time out
    server = await start_server(providers=[provider])
    stub = channel_to(server)
    queued = await stub.QueueTask(queue_request(timeout=Duration(nanos=200_000_000)), timeout=5)
    stream = Stream(stub)
    stream.subscribe(queued.task_id)
    (result,) = await stream.results(1)
    stream.close()
    assert result.state == task_pb2.TASK_STATE_FAILED
    assert result.error.code == task_pb2.ERROR_CODE_TIMEOUT
    stats = await stub.Stats(pb.StatsRequest(), timeout=5)
    assert stats.counters.timed_out == 1
    assert stats.counters.failed == 1


async def test_cancel_a_queued_and_a_running_task(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    provider = GatedProvider()
    server = await start_server(make_config(processor={"num_workers": 1}), providers=[provider])
    stub = channel_to(server)
    running = await stub.QueueTask(queue_request("https://e.com/running"), timeout=5)
    await provider.wait_calls(1)
    queued = await stub.QueueTask(queue_request("https://e.com/queued"), timeout=5)

    cancelled = await stub.CancelTask(pb.CancelTaskRequest(task_id=queued.task_id), timeout=5)
    assert cancelled.state == task_pb2.TASK_STATE_CANCELLED
    cancelled = await stub.CancelTask(pb.CancelTaskRequest(task_id=running.task_id), timeout=5)
    assert cancelled.state == task_pb2.TASK_STATE_CANCELLED

    stream = Stream(stub)
    stream.subscribe(running.task_id, queued.task_id)
    results = {r.task_id: r for r in await stream.results(2)}
    stream.close()
    for task_id in (running.task_id, queued.task_id):
        assert results[task_id].state == task_pb2.TASK_STATE_CANCELLED
        assert results[task_id].error.code == task_pb2.ERROR_CODE_CANCELLED
    # The worker survived the cancellation and takes new work.
    provider.gate.set()
    after = await stub.QueueTask(queue_request("https://e.com/after"), timeout=5)
    stream = Stream(stub)
    stream.subscribe(after.task_id)
    (result,) = await stream.results(1)
    stream.close()
    assert result.success
    # Cancelling a finished task changes nothing.
    again = await stub.CancelTask(pb.CancelTaskRequest(task_id=after.task_id), timeout=5)
    assert again.state == task_pb2.TASK_STATE_SUCCEEDED
    stats = await stub.Stats(pb.StatsRequest(), timeout=5)
    assert stats.counters.cancelled == 2
    assert stats.counters.completed == 1


async def test_two_subscribers_each_get_exactly_their_results(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    server = await start_server()
    stub = channel_to(server)
    alice_ids, bob_ids = [], []
    for n in range(10):
        a = await stub.QueueTask(
            queue_request(f"https://e.com/a{n}"), metadata=(("aiproc-client-id", "alice"),)
        )
        b = await stub.QueueTask(
            queue_request(f"https://e.com/b{n}"), metadata=(("aiproc-client-id", "bob"),)
        )
        alice_ids.append(a.task_id)
        bob_ids.append(b.task_id)
    alice, bob = Stream(stub, "alice"), Stream(stub, "bob")
    alice.subscribe(all_tasks=True)
    bob.subscribe(all_tasks=True)
    alice_results, bob_results = await asyncio.gather(alice.results(10), bob.results(10))
    assert sorted(r.task_id for r in alice_results) == sorted(alice_ids)
    assert sorted(r.task_id for r in bob_results) == sorted(bob_ids)
    # Bob cannot see Alice's task.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetTask(
            pb.GetTaskRequest(task_id=alice_ids[0]), metadata=(("aiproc-client-id", "bob"),)
        )
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    alice.close()
    bob.close()


async def test_a_stalled_subscriber_stalls_neither_workers_nor_others(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    server = await start_server(make_config(processor={"rate_limit_rps": 10_000.0}))
    stub = channel_to(server)
    stalled = Stream(stub)
    stalled.subscribe(all_tasks=True)  # and never reads
    ids = [(await stub.QueueTask(queue_request(), timeout=5)).task_id for _ in range(600)]
    reader = Stream(stub)
    reader.subscribe(all_tasks=True)
    got = await reader.results(600)
    assert sorted(r.task_id for r in got) == sorted(ids)
    # The stalled one still gets everything, once, when it finally reads.
    late = await stalled.results(600)
    assert sorted(r.task_id for r in late) == sorted(ids)
    stalled.close()
    reader.close()


async def test_unacked_results_are_delivered_again_on_reconnect(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    server = await start_server()
    stub = channel_to(server)
    first = await stub.QueueTask(queue_request("https://e.com/1"), timeout=5)
    second = await stub.QueueTask(queue_request("https://e.com/2"), timeout=5)
    stream = Stream(stub)
    stream.subscribe(all_tasks=True)
    await stream.results(2)
    stream.ack(first.task_id)
    stream.close()
    async with asyncio.timeout(5):
        assert await stream.call.read() is grpc.aio.EOF  # half-close ends the call
    stats = await stub.Stats(pb.StatsRequest(), timeout=5)
    assert stats.undelivered_results == 1

    again = Stream(stub)
    again.subscribe(all_tasks=True)
    (redelivered,) = await again.results(1)
    assert redelivered.task_id == second.task_id
    again.close()


async def test_subscribing_to_an_unknown_task_ends_the_stream_with_not_found(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    server = await start_server()
    stub = channel_to(server)
    stream = Stream(stub)
    stream.subscribe("f" * 32)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.call.read()
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "f" * 32 in (caught.value.details() or "")


async def test_progress_events_are_sent_when_asked(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    provider = GatedProvider()
    server = await start_server(providers=[provider])
    stub = channel_to(server)
    stream = Stream(stub)
    stream.subscribe(all_tasks=True, progress=True)
    # Progress is live-only; a first result proves the subscription is in place.
    provider.gate.set()
    warmup = await stub.QueueTask(queue_request(), timeout=5)
    async with asyncio.timeout(5):
        while (await stream.call.read()).result.task_id != warmup.task_id:
            pass
    provider.gate.clear()
    queued = await stub.QueueTask(queue_request(), timeout=5)
    await provider.wait_calls(2)
    provider.gate.set()
    kinds = []
    async with asyncio.timeout(5):
        while True:
            response = await stream.call.read()
            assert response is not grpc.aio.EOF
            if response.WhichOneof("kind") == "result":
                break
            # The warm-up's own events may trail its result (a late subscription
            # reads results from the store first): only the second task counts.
            if response.progress.task_id == queued.task_id:
                kinds.append(response.progress.kind)
    stream.close()
    assert kinds == [pb.PROGRESS_KIND_QUEUED, pb.PROGRESS_KIND_STARTED]


async def test_idempotency_key_returns_the_original_task(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    server = await start_server()
    stub = channel_to(server)
    first = await stub.QueueTask(queue_request(idempotency_key="k-1"), timeout=5)
    repeat = await stub.QueueTask(queue_request(idempotency_key="k-1"), timeout=5)
    assert repeat.task_id == first.task_id
    assert repeat.deduplicated
    assert not first.deduplicated
    stats = await stub.Stats(pb.StatsRequest(), timeout=5)
    assert stats.counters.queued == 1


async def test_get_task_reports_state_spec_and_result(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    server = await start_server()
    stub = channel_to(server)
    queued = await stub.QueueTask(
        queue_request(metadata={"source": "crawler"}, instructions="Summarise."), timeout=5
    )
    stream = Stream(stub)
    stream.subscribe(queued.task_id)
    (result,) = await stream.results(1)
    stream.close()
    assert result.metadata["source"] == "crawler"
    got = await stub.GetTask(pb.GetTaskRequest(task_id=queued.task_id), timeout=5)
    assert got.task.state == task_pb2.TASK_STATE_SUCCEEDED
    assert got.task.spec.instructions == "Summarise."
    assert got.task.result.task_id == queued.task_id
    assert got.task.HasField("started_at")
    assert got.task.HasField("finished_at")


async def test_stats_reports_workers_queue_and_providers(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    server = await start_server(make_config(processor={"num_workers": 3, "queue_size": 7}))
    stub = channel_to(server)
    stats = await stub.Stats(pb.StatsRequest(), timeout=5)
    assert stats.total_workers == 3
    assert stats.queue_capacity == 7
    assert stats.is_running
    assert [d.priority for d in stats.queue_depths] == [
        task_pb2.PRIORITY_CRITICAL,
        task_pb2.PRIORITY_HIGH,
        task_pb2.PRIORITY_NORMAL,
        task_pb2.PRIORITY_LOW,
    ]
    assert [p.name for p in stats.providers] == ["offline"]


async def test_health_and_reflection_are_served(
    start_server: ServerFactory,
) -> None:
    server = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(
            health_pb2.HealthCheckRequest(service="aiproc.v1.ProcessorService"), timeout=5
        )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")

        async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield request

        names = []
        async for response in reflect.ServerReflectionInfo(one(), timeout=5):
            names = [s.name for s in response.list_services_response.service]
        assert "aiproc.v1.ProcessorService" in names


async def test_graceful_shutdown_finishes_running_work_and_reports_queued_work(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    provider = GatedProvider()
    server = await start_server(make_config(processor={"num_workers": 1}), providers=[provider])
    stub = channel_to(server)
    stream = Stream(stub)
    stream.subscribe(all_tasks=True)
    running = await stub.QueueTask(queue_request("https://e.com/running"), timeout=5)
    await provider.wait_calls(1)
    queued = await stub.QueueTask(queue_request("https://e.com/queued"), timeout=5)

    async with grpc.aio.insecure_channel(server.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        stopping = asyncio.create_task(server.stop(grace=5.0))
        # Health turns NOT_SERVING and new work is refused while the running task finishes.
        async with asyncio.timeout(5):
            while True:
                reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
                if reply.status == health_pb2.HealthCheckResponse.NOT_SERVING:
                    break
                await asyncio.sleep(0.01)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.QueueTask(queue_request(), timeout=5)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        provider.gate.set()
        results = {r.task_id: r for r in await stream.results(2)}
        await stopping
    assert results[running.task_id].success
    assert results[queued.task_id].error.code == task_pb2.ERROR_CODE_SHUTDOWN


async def test_stream_results_false_turns_streaming_off_but_get_task_still_works(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    server = await start_server(make_config(processor={"stream_results": False}))
    stub = channel_to(server)
    queued = await stub.QueueTask(queue_request(), timeout=5)
    stream = Stream(stub)
    stream.subscribe(queued.task_id)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stream.call.read()
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stream_results" in (caught.value.details() or "")
    async with asyncio.timeout(5):
        while True:
            got = await stub.GetTask(pb.GetTaskRequest(task_id=queued.task_id), timeout=5)
            if got.task.state == task_pb2.TASK_STATE_SUCCEEDED:
                break
            await asyncio.sleep(0.01)
    assert got.task.result.success


async def test_a_providers_max_concurrent_requests_is_enforced_and_overflow_goes_elsewhere(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    narrow, wide = GatedProvider("narrow"), GatedProvider("wide")
    config = make_config(processor={"num_workers": 6, "rate_limit_rps": 1000.0})
    config = replace(
        config,
        providers=(
            ProviderConfig(name="narrow", kind="test", priority=1, max_concurrent_requests=2),
            ProviderConfig(name="wide", kind="test", priority=2, max_concurrent_requests=10),
        ),
    )
    server = await start_server(config, providers=[narrow, wide])
    stub = channel_to(server)
    for _ in range(6):
        await stub.QueueTask(queue_request(), timeout=5)
    await narrow.wait_calls(2)
    await wide.wait_calls(4)
    stats = await stub.Stats(pb.StatsRequest(), timeout=5)
    in_flight = {p.name: p.in_flight for p in stats.providers}
    assert in_flight == {"narrow": 2, "wide": 4}
    narrow.gate.set()
    wide.gate.set()
