"""A minimal OTLP/gRPC sink for benchmarks: accepts traces, metrics and logs and counts them.

Run as its own process, so that receiving costs the benchmarked process nothing:

    python bench/otlp_sink.py          # prints "otlp sink listening on 127.0.0.1:PORT"
    kill -TERM <pid>                   # prints the counts as one JSON line, exits 0

The tests have a full receiver (tests/telemetry/otlp_receiver.py); this one only counts.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from dataclasses import asdict, dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

LISTENING = "otlp sink listening on "


@dataclass
class Counts:
    requests: int = 0
    bytes: int = 0
    spans: int = 0
    metric_points: int = 0
    log_records: int = 0


def _count_spans(request: trace_service_pb2.ExportTraceServiceRequest) -> int:
    return sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)


def _count_points(request: metrics_service_pb2.ExportMetricsServiceRequest) -> int:
    total = 0
    for resource in request.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                kind = metric.WhichOneof("data")
                if kind is not None:
                    total += len(getattr(metric, kind).data_points)
    return total


def _count_logs(request: logs_service_pb2.ExportLogsServiceRequest) -> int:
    return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)


def _handlers(counts: Counts) -> list[grpc.GenericRpcHandler]:
    """The collector's three Export methods, deserialising and counting each request."""

    async def traces(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        counts.requests += 1
        counts.bytes += len(request)
        counts.spans += _count_spans(
            trace_service_pb2.ExportTraceServiceRequest.FromString(request)
        )
        return trace_service_pb2.ExportTraceServiceResponse()

    async def metrics(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        counts.requests += 1
        counts.bytes += len(request)
        parsed = metrics_service_pb2.ExportMetricsServiceRequest.FromString(request)
        counts.metric_points += _count_points(parsed)
        return metrics_service_pb2.ExportMetricsServiceResponse()

    async def logs(
        request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> logs_service_pb2.ExportLogsServiceResponse:
        counts.requests += 1
        counts.bytes += len(request)
        parsed = logs_service_pb2.ExportLogsServiceRequest.FromString(request)
        counts.log_records += _count_logs(parsed)
        return logs_service_pb2.ExportLogsServiceResponse()

    def export(handler: Any) -> grpc.RpcMethodHandler[bytes, Any]:
        # Bytes in, so that the request size is the size on the wire.
        return grpc.unary_unary_rpc_method_handler(
            handler,
            request_deserializer=lambda data: data,
            response_serializer=lambda message: message.SerializeToString(),
        )

    return [
        grpc.method_handlers_generic_handler(
            f"opentelemetry.proto.collector.{signal_name}.v1.{service}", {"Export": export(fn)}
        )
        for signal_name, service, fn in (
            ("trace", "TraceService", traces),
            ("metrics", "MetricsService", metrics),
            ("logs", "LogsService", logs),
        )
    ]


async def serve(host: str = "127.0.0.1", port: int = 0) -> Counts:
    """Serves until SIGTERM or SIGINT; returns what was received."""
    counts = Counts()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(_handlers(counts))
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    print(f"{LISTENING}{host}:{bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(grace=1.0)
    return counts


def main() -> int:
    counts = asyncio.run(serve())
    print(json.dumps(asdict(counts)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
