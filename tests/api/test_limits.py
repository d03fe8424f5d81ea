"""The server's limits, each exceeded over a real socket: the status, the message, the GOAWAY."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import grpc
import pytest

from aiproc.client._channel import channel_options
from aiproc.server.app import AiprocServer
from aiproc.server.config import KeepaliveConfig, ServerConfig
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc
from aiproc.v1 import task_pb2
from tests.api.test_server import Stream, queue_request
from tests.h2_proxy import (
    ENHANCE_YOUR_CALM,
    GOAWAY,
    PING,
    SETTINGS,
    SETTINGS_MAX_CONCURRENT_STREAMS,
    SETTINGS_MAX_HEADER_LIST_SIZE,
    H2Proxy,
    h2_proxy,
)
from tests.support import GatedProvider, ServerFactory, make_config

Connect = Callable[[AiprocServer], "pb_grpc.ProcessorServiceAsyncStub"]


async def test_an_oversized_message_is_resource_exhausted(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    server = await start_server(make_config(server={"max_message_bytes": 3 * 1024 * 1024}))
    stub = channel_to(server)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.QueueTask(queue_request(content="x" * (3 * 1024 * 1024)), timeout=10)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in (caught.value.details() or "")
    # The connection is fine afterwards.
    await stub.Stats(pb.StatsRequest(), timeout=5)


async def test_the_largest_valid_queue_request_fits_the_default_message_limit(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    """Every field at its limit, in 4-byte characters: what max_message_bytes must hold."""
    from aiproc.server.api import convert

    wide = "\U0001d518"  # 4 bytes in UTF-8
    config = make_config()
    spec = task_pb2.TaskSpec(
        url="https://e.com/" + wide * (convert.MAX_URL_LENGTH - 14),
        content="a" * config.server.max_content_bytes,
        instructions=wide * convert.MAX_TEXT_FIELD,
        model=wide * convert.MAX_ID_LENGTH,
        idempotency_key=wide * 256,
        metadata={
            f"{n:02d}" + wide * (convert.MAX_METADATA_KEY - 2): wide * convert.MAX_METADATA_VALUE
            for n in range(convert.MAX_METADATA_ENTRIES)
        },
    )
    request = pb.QueueTaskRequest(task=spec)
    overhead = request.ByteSize() - config.server.max_content_bytes
    from aiproc.server.config import QUEUE_REQUEST_OVERHEAD_BYTES

    assert overhead <= QUEUE_REQUEST_OVERHEAD_BYTES
    assert request.ByteSize() <= config.server.max_message_bytes
    server = await start_server(config, providers=[GatedProvider()])
    queued = await channel_to(server).QueueTask(request, timeout=10)
    assert queued.state == task_pb2.TASK_STATE_QUEUED


async def test_oversized_metadata_is_resource_exhausted_every_time(
    start_server: ServerFactory,
) -> None:
    server = await start_server(make_config(server={"max_metadata_bytes": 4096}))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ProcessorServiceStub(channel)
        await stub.Stats(pb.StatsRequest(), metadata=(("x-fits", "a" * 3000),), timeout=5)
        # One limit, not gRPC's soft/hard pair, between which a random share is refused.
        for _ in range(5):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Stats(pb.StatsRequest(), metadata=(("x-big", "a" * 4500),), timeout=5)
            assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert "metadata size exceeds" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("entries", "key"),
    [
        ((("aiproc-client-id", "a" * 129),), "aiproc-client-id"),
        ((("aiproc-client-id", "alice"), ("aiproc-client-id", "bob")), "aiproc-client-id"),
        ((("traceparent", "0" * 257),), "traceparent"),
        ((("tracestate", "a=" + "b" * 1100),), "tracestate"),
    ],
)
async def test_metadata_we_read_is_limited_and_the_key_named(
    start_server: ServerFactory,
    channel_to: Connect,
    entries: tuple[tuple[str, str], ...],
    key: str,
) -> None:
    server = await start_server()
    stub = channel_to(server)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.QueueTask(queue_request(), metadata=entries, timeout=5)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"metadata {key}:")
    # Streams check the same entries before they open.
    call = stub.WatchEvents(pb.WatchEventsRequest(), metadata=entries, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith(f"metadata {key}:")
    stats = await stub.Stats(pb.StatsRequest(), timeout=5)
    assert stats.counters.queued == 0


async def open_watch(
    stub: pb_grpc.ProcessorServiceAsyncStub, client_id: str
) -> grpc.aio.UnaryStreamCall[pb.WatchEventsRequest, pb.WatchEventsResponse]:
    """A WatchEvents call, once the server has it open (it sends its initial metadata then)."""
    call = stub.WatchEvents(
        pb.WatchEventsRequest(), metadata=(("aiproc-client-id", client_id),), timeout=30
    )
    await call.initial_metadata()
    return call


async def try_open_watch(
    stub: pb_grpc.ProcessorServiceAsyncStub, client_id: str
) -> grpc.aio.UnaryStreamCall[pb.WatchEventsRequest, pb.WatchEventsResponse] | None:
    """`open_watch`, or None when the server refuses it for the stream limit."""
    try:
        return await open_watch(stub, client_id)
    except grpc.aio.AioRpcError as exc:
        if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise
        return None


async def test_streams_beyond_the_per_identity_limit_are_resource_exhausted(
    start_server: ServerFactory, channel_to: Connect
) -> None:
    server = await start_server(make_config(server={"max_streams_per_client": 3}))
    stub = channel_to(server)
    results = Stream(stub, "alice")
    results.subscribe(all_tasks=True)
    watches = [await open_watch(stub, "alice") for _ in range(2)]
    # A result proves the StreamResults call is open and counted.
    queued = await stub.QueueTask(
        queue_request(), metadata=(("aiproc-client-id", "alice"),), timeout=5
    )
    (result,) = await results.results(1)
    assert result.task_id == queued.task_id

    for call in (
        stub.WatchEvents(
            pb.WatchEventsRequest(), metadata=(("aiproc-client-id", "alice"),), timeout=5
        ),
        Stream(stub, "alice").call,
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert caught.value.details() == (
            "client 'alice' already has 3 streams open, the most allowed (StreamResults and"
            " WatchEvents together, limit 3); close one before opening another"
        )
    # Another identity has slots of its own.
    bob = await open_watch(stub, "bob")
    # A stream that ends gives its slot back.
    watches[0].cancel()
    async with asyncio.timeout(10):
        while (again := await try_open_watch(stub, "alice")) is None:
            pass
    for call in (again, bob, watches[1]):
        call.cancel()
    results.close()


async def test_the_server_advertises_its_stream_and_header_limits(
    start_server: ServerFactory,
) -> None:
    config = make_config(server={"max_streams_per_connection": 7, "max_metadata_bytes": 5000})
    server = await start_server(config)
    async with (
        h2_proxy(server.address) as proxy,
        grpc.aio.insecure_channel(proxy.address) as channel,
    ):
        await pb_grpc.ProcessorServiceStub(channel).Stats(pb.StatsRequest(), timeout=5)

        def advertised() -> dict[int, int]:
            frames = proxy.sent_by("server", SETTINGS)
            return {k: v for f in frames for k, v in f.settings().items()}

        await proxy.wait_for(lambda: SETTINGS_MAX_CONCURRENT_STREAMS in advertised())
    assert advertised()[SETTINGS_MAX_CONCURRENT_STREAMS] == 7
    assert advertised()[SETTINGS_MAX_HEADER_LIST_SIZE] == 5000


async def test_calls_beyond_a_connections_stream_limit_wait_and_none_is_refused(
    start_server: ServerFactory,
) -> None:
    """A client at the limit starts a call the moment one ends; the server must count that
    ended stream out as the client does, not once it has freed it, or it refuses the new one
    (UNAVAILABLE, RST_STREAM REFUSED_STREAM): a call never run, yet not retried."""
    server = await start_server(make_config(server={"max_streams_per_connection": 2}))
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ProcessorServiceStub(channel)
        calls = [stub.Stats(pb.StatsRequest(), timeout=30) for _ in range(400)]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert not refused, refused[0]


def quiet_server(**keepalive: object) -> dict[str, object]:
    """A keepalive policy whose own pings stay out of the way of a test about the client's."""
    return {"ping_interval": "1h", **keepalive}


@contextlib.asynccontextmanager
async def idle_stream(proxy: H2Proxy, options: list[tuple[str, int]]) -> AsyncIterator[None]:
    """Holds a quiet WatchEvents call open through `proxy` while the test watches frames."""
    async with grpc.aio.insecure_channel(proxy.address, options=options) as channel:
        call = await open_watch(pb_grpc.ProcessorServiceStub(channel), "pinger")
        try:
            yield
        finally:
            call.cancel()


def client_pings(proxy: H2Proxy) -> int:
    return sum(f.is_ping for f in proxy.sent_by("client", PING))


async def test_the_client_keeps_pinging_a_quiet_stream_without_being_sent_away(
    start_server: ServerFactory,
) -> None:
    """The client's options, with its interval shortened, against a strict server.

    gRPC paces a client's pings at one a second at most, whatever keepalive_time says,
    so this cannot show the 60 s / 30 s ratio (the test below checks it on the defaults);
    it shows that the client keeps pinging a stream on which nothing flows (gRPC's own
    default stops after two pings) and that a policy tolerating one strike lets it be.
    """
    server = await start_server(
        make_config(keepalive=quiet_server(min_client_ping_interval="100ms", max_ping_strikes=1))
    )
    async with (
        h2_proxy(server.address) as proxy,
        idle_stream(proxy, channel_options(keepalive_time_ms=200)),
    ):
        # Two more than a policy tolerating one strike would let through if they were wrong.
        await proxy.wait_for(lambda: client_pings(proxy) >= 4)
        assert proxy.sent_by("server", GOAWAY) == []


async def test_a_client_pinging_too_often_is_sent_away(start_server: ServerFactory) -> None:
    server = await start_server(
        make_config(keepalive=quiet_server(min_client_ping_interval="5s", max_ping_strikes=1))
    )
    async with (
        h2_proxy(server.address) as proxy,
        idle_stream(proxy, channel_options(keepalive_time_ms=100)),
    ):
        await proxy.wait_for(lambda: bool(proxy.sent_by("server", GOAWAY)))
    goaway = proxy.sent_by("server", GOAWAY)[0]
    assert goaway.goaway_code() == ENHANCE_YOUR_CALM
    assert b"too_many_pings" in goaway.payload


async def test_the_server_pings_its_clients(start_server: ServerFactory) -> None:
    server = await start_server(make_config(keepalive={"ping_interval": "50ms"}))
    async with h2_proxy(server.address) as proxy, idle_stream(proxy, channel_options()):
        await proxy.wait_for(lambda: sum(f.is_ping for f in proxy.sent_by("server", PING)) >= 3)


@pytest.mark.parametrize(
    "keepalive",
    [
        {"max_connection_idle": "100ms"},
        {"max_connection_age": "100ms", "max_connection_age_grace": "100ms"},
    ],
)
async def test_idle_and_old_connections_are_sent_away(
    start_server: ServerFactory, keepalive: dict[str, object]
) -> None:
    server = await start_server(make_config(keepalive=keepalive))
    async with (
        h2_proxy(server.address) as proxy,
        grpc.aio.insecure_channel(proxy.address) as channel,
    ):
        await pb_grpc.ProcessorServiceStub(channel).Stats(pb.StatsRequest(), timeout=5)
        await proxy.wait_for(lambda: bool(proxy.sent_by("server", GOAWAY)))
        # The channel reconnects by itself for the next call.
        await pb_grpc.ProcessorServiceStub(channel).Stats(pb.StatsRequest(), timeout=5)


def test_the_clients_defaults_agree_with_the_servers_defaults() -> None:
    policy = KeepaliveConfig()
    options = dict(channel_options())
    assert options["grpc.keepalive_time_ms"] >= 2 * policy.min_client_ping_interval * 1000
    # Pings without calls only where the server permits them.
    assert not options["grpc.keepalive_permit_without_calls"] or policy.permit_without_calls
    assert ServerConfig().max_streams_per_connection >= 64  # submit-batch's calls in flight
