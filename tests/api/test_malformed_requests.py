"""Bytes that are not a valid message, to each kind of method: INVALID_ARGUMENT, never UNKNOWN."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2

from aiproc.v1 import processor_service_pb2 as pb
from tests.api.test_server import queue_request
from tests.support import ServerFactory

CORRUPT = b"\xff\xff\xff"  # field 0x1fffff... with a wire type that does not exist
BAD_UTF8 = b"\x0a\x02\xc3\x28"  # field 1 (a string in every request here), invalid UTF-8


async def one(message: bytes) -> AsyncIterator[bytes]:
    yield message


async def send(channel: grpc.aio.Channel, method: str, kind: str, payload: bytes) -> object:
    """Calls `method` with raw bytes, as its kind of call, and reads the first answer."""
    if kind == "unary":
        return await channel.unary_unary(method)(payload, timeout=5)
    if kind == "server_stream":
        return await channel.unary_stream(method)(payload, timeout=5).read()
    return await channel.stream_stream(method)(one(payload), timeout=5).read()


@pytest.mark.parametrize("payload", [CORRUPT, BAD_UTF8])
@pytest.mark.parametrize(
    ("method", "kind", "type_name"),
    [
        ("/aiproc.v1.ProcessorService/QueueTask", "unary", "aiproc.v1.QueueTaskRequest"),
        ("/aiproc.v1.ProcessorService/GetTask", "unary", "aiproc.v1.GetTaskRequest"),
        (
            "/aiproc.v1.ProcessorService/WatchEvents",
            "server_stream",
            "aiproc.v1.WatchEventsRequest",
        ),
        ("/aiproc.v1.ProcessorService/StreamResults", "bidi", "aiproc.v1.StreamResultsRequest"),
        ("/grpc.health.v1.Health/Check", "unary", "grpc.health.v1.HealthCheckRequest"),
        ("/grpc.health.v1.Health/Watch", "server_stream", "grpc.health.v1.HealthCheckRequest"),
        (
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            "bidi",
            "grpc.reflection.v1alpha.ServerReflectionRequest",
        ),
    ],
)
async def test_malformed_bytes_are_invalid_argument(
    start_server: ServerFactory, method: str, kind: str, type_name: str, payload: bytes
) -> None:
    if payload is BAD_UTF8 and type_name == "aiproc.v1.WatchEventsRequest":
        pytest.skip("WatchEventsRequest has no fields: any field 1 is an unknown field")
    server = await start_server()
    async with grpc.aio.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await send(channel, method, kind, payload)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details() == f"request: not a valid {type_name} message"
        # Well-formed bytes still go through the same raw path.
        reply = await channel.unary_unary("/grpc.health.v1.Health/Check")(
            health_pb2.HealthCheckRequest().SerializeToString(), timeout=5
        )
        assert health_pb2.HealthCheckResponse.FromString(reply).status == (
            health_pb2.HealthCheckResponse.SERVING
        )
        raw = await channel.unary_unary("/aiproc.v1.ProcessorService/QueueTask")(
            queue_request().SerializeToString(), timeout=5
        )
        assert len(pb.QueueTaskResponse.FromString(raw).task_id) == 32
