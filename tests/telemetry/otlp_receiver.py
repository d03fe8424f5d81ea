"""A real OTLP receiver for tests: the collector's own services, on 127.0.0.1, port 0.

    async with OtlpReceiver() as receiver:           # OTLP/gRPC
        ...  # point OTEL_EXPORTER_OTLP_ENDPOINT at receiver.endpoint
        (span,) = await receiver.wait_for_spans(lambda s: s.name == "chat fake-gpt")
        points = await receiver.wait_for_metric("aiproc.tasks")

`OtlpHttpReceiver` is the same over HTTP/protobuf (POST /v1/traces, /v1/metrics,
/v1/logs). Both keep what they received three ways: flattened (`spans`,
`metrics`, `logs`), as the decoded requests, and as bytes (`raw`), for checks
that a secret appears nowhere in what was exported.

The gRPC services are the official definitions from opentelemetry-proto; an
exporter that talks to this receiver talks to a collector.
"""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

import grpc
from aiohttp import web
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1 import logs_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.trace.v1 import trace_pb2

__all__ = [
    "LogEntry",
    "MetricPoint",
    "OtlpHttpReceiver",
    "OtlpReceiver",
    "ReceivedSpan",
    "SpanEvent",
    "SpanLink",
]

Attributes = dict[str, Any]


@dataclass(frozen=True, slots=True)
class SpanEvent:
    name: str
    attributes: Attributes


@dataclass(frozen=True, slots=True)
class SpanLink:
    trace_id: str
    span_id: str
    attributes: Attributes


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    """One exported span, flattened; ids in lowercase hex, "" when absent."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str
    """INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER or UNSPECIFIED."""
    attributes: Attributes
    events: tuple[SpanEvent, ...]
    links: tuple[SpanLink, ...]
    status_code: str
    """UNSET, OK or ERROR."""
    status_message: str
    resource: Attributes
    scope: str
    start_time_ns: int
    end_time_ns: int

    @property
    def service_name(self) -> str:
        return str(self.resource.get("service.name", ""))


@dataclass(frozen=True, slots=True)
class MetricPoint:
    """One data point of one metric; `value` for sums and gauges, `count`/`sum` otherwise."""

    name: str
    kind: str
    """sum, gauge, histogram, exponential_histogram or summary."""
    unit: str
    attributes: Attributes
    resource: Attributes
    value: float | int | None = None
    count: int | None = None
    sum: float | None = None


@dataclass(frozen=True, slots=True)
class LogEntry:
    body: Any
    severity: str
    attributes: Attributes
    trace_id: str
    span_id: str
    resource: Attributes


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    return getattr(value, which)


def _attributes(pairs: Iterable[KeyValue]) -> Attributes:
    return {pair.key: _value(pair.value) for pair in pairs}


def _hex(raw: bytes) -> str:
    return raw.hex() if raw.strip(b"\0") else ""


def _spans(request: trace_service_pb2.ExportTraceServiceRequest) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=_hex(span.trace_id),
                        span_id=_hex(span.span_id),
                        parent_span_id=_hex(span.parent_span_id),
                        kind=trace_pb2.Span.SpanKind.Name(span.kind).removeprefix("SPAN_KIND_"),
                        attributes=_attributes(span.attributes),
                        events=tuple(
                            SpanEvent(e.name, _attributes(e.attributes)) for e in span.events
                        ),
                        links=tuple(
                            SpanLink(_hex(k.trace_id), _hex(k.span_id), _attributes(k.attributes))
                            for k in span.links
                        ),
                        status_code=trace_pb2.Status.StatusCode.Name(span.status.code).removeprefix(
                            "STATUS_CODE_"
                        ),
                        status_message=span.status.message,
                        resource=resource,
                        scope=scope_spans.scope.name,
                        start_time_ns=span.start_time_unix_nano,
                        end_time_ns=span.end_time_unix_nano,
                    )
                )
    return spans


def _points(metric: metrics_pb2.Metric, resource: Attributes) -> list[MetricPoint]:
    kind = metric.WhichOneof("data")
    if kind is None:
        return []
    points = []
    for point in getattr(metric, kind).data_points:
        attributes = _attributes(point.attributes)
        value: float | int | None = None
        count: int | None = None
        total: float | None = None
        if kind in ("sum", "gauge"):
            which = point.WhichOneof("value")
            value = None if which is None else getattr(point, which)
        else:
            count, total = point.count, point.sum
        points.append(
            MetricPoint(
                name=metric.name,
                kind=kind,
                unit=metric.unit,
                attributes=attributes,
                resource=resource,
                value=value,
                count=count,
                sum=total,
            )
        )
    return points


def _metrics(request: metrics_service_pb2.ExportMetricsServiceRequest) -> list[MetricPoint]:
    points = []
    for resource_metrics in request.resource_metrics:
        resource = _attributes(resource_metrics.resource.attributes)
        for scope_metrics in resource_metrics.scope_metrics:
            for metric in scope_metrics.metrics:
                points.extend(_points(metric, resource))
    return points


def _logs(request: logs_service_pb2.ExportLogsServiceRequest) -> list[LogEntry]:
    entries = []
    for resource_logs in request.resource_logs:
        resource = _attributes(resource_logs.resource.attributes)
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                entries.append(
                    LogEntry(
                        body=_value(record.body),
                        severity=record.severity_text
                        or logs_pb2.SeverityNumber.Name(record.severity_number),
                        attributes=_attributes(record.attributes),
                        trace_id=_hex(record.trace_id),
                        span_id=_hex(record.span_id),
                        resource=resource,
                    )
                )
    return entries


@dataclass
class _Received:
    """Everything received so far, and a condition notified on each export."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    metrics: dict[str, list[MetricPoint]] = field(default_factory=dict)
    logs: list[LogEntry] = field(default_factory=list)
    trace_requests: list[trace_service_pb2.ExportTraceServiceRequest] = field(default_factory=list)
    metric_requests: list[metrics_service_pb2.ExportMetricsServiceRequest] = field(
        default_factory=list
    )
    raw: list[bytes] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def add_traces(
        self, request: trace_service_pb2.ExportTraceServiceRequest, raw: bytes
    ) -> None:
        async with self.changed:
            self.raw.append(raw)
            self.trace_requests.append(request)
            self.spans.extend(_spans(request))
            self.changed.notify_all()

    async def add_metrics(
        self, request: metrics_service_pb2.ExportMetricsServiceRequest, raw: bytes
    ) -> None:
        async with self.changed:
            self.raw.append(raw)
            self.metric_requests.append(request)
            for point in _metrics(request):
                self.metrics.setdefault(point.name, []).append(point)
            self.changed.notify_all()

    async def add_logs(
        self, request: logs_service_pb2.ExportLogsServiceRequest, raw: bytes
    ) -> None:
        async with self.changed:
            self.raw.append(raw)
            self.logs.extend(_logs(request))
            self.changed.notify_all()


class _Receiver:
    """What both transports share: the received data and the waits on it."""

    def __init__(self) -> None:
        self._received = _Received()
        self._endpoint = ""

    @property
    def endpoint(self) -> str:
        """The OTLP endpoint URL, http://127.0.0.1:PORT; only once started."""
        if not self._endpoint:
            raise RuntimeError("the receiver is not started")
        return self._endpoint

    @property
    def spans(self) -> Sequence[ReceivedSpan]:
        return self._received.spans

    @property
    def metrics(self) -> dict[str, list[MetricPoint]]:
        """Data points by metric name, in the order they arrived (every export, cumulative)."""
        return self._received.metrics

    @property
    def logs(self) -> Sequence[LogEntry]:
        return self._received.logs

    @property
    def trace_requests(self) -> Sequence[trace_service_pb2.ExportTraceServiceRequest]:
        return self._received.trace_requests

    @property
    def metric_requests(self) -> Sequence[metrics_service_pb2.ExportMetricsServiceRequest]:
        return self._received.metric_requests

    @property
    def raw(self) -> Sequence[bytes]:
        """Every export request (traces, metrics, logs) as protobuf bytes, in arrival order."""
        return self._received.raw

    def raw_bytes(self) -> bytes:
        return b"".join(self._received.raw)

    async def wait_for_spans(
        self,
        predicate: Callable[[ReceivedSpan], bool] = lambda span: True,
        timeout: float = 10.0,  # noqa: ASYNC109 - a test's deadline, reported in the failure
        *,
        count: int = 1,
    ) -> list[ReceivedSpan]:
        """The received spans matching `predicate`, once there are at least `count`.

        Raises TimeoutError naming what arrived if they do not within `timeout` seconds.
        """

        def matching() -> list[ReceivedSpan]:
            return [span for span in self._received.spans if predicate(span)]

        try:
            async with asyncio.timeout(timeout), self._received.changed:
                await self._received.changed.wait_for(lambda: len(matching()) >= count)
        except TimeoutError:
            names = sorted({f"{s.kind} {s.name}" for s in self._received.spans})
            raise TimeoutError(
                f"{len(matching())} of {count} matching spans within {timeout}s; "
                f"received {len(self._received.spans)} spans: {names}"
            ) from None
        return matching()

    async def wait_for_metric(
        self,
        name: str,
        timeout: float = 10.0,  # noqa: ASYNC109 - a test's deadline, reported in the failure
        predicate: Callable[[MetricPoint], bool] = lambda point: True,
    ) -> list[MetricPoint]:
        """The data points of metric `name` matching `predicate`, once there is one."""

        def matching() -> list[MetricPoint]:
            return [p for p in self._received.metrics.get(name, []) if predicate(p)]

        try:
            async with asyncio.timeout(timeout), self._received.changed:
                await self._received.changed.wait_for(lambda: bool(matching()))
        except TimeoutError:
            raise TimeoutError(
                f"no data point of {name!r} within {timeout}s; "
                f"received metrics: {sorted(self._received.metrics)}"
            ) from None
        return matching()

    def __repr__(self) -> str:
        where = self._endpoint or "not started"
        received = self._received
        return (
            f"<{type(self).__name__} [{where} | {len(received.spans)} spans, "
            f"{len(received.metrics)} metrics, {len(received.logs)} logs]>"
        )


class _TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, received: _Received) -> None:
        self._received = received

    async def Export(
        self,
        request: trace_service_pb2.ExportTraceServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        await self._received.add_traces(request, request.SerializeToString())
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, received: _Received) -> None:
        self._received = received

    async def Export(
        self,
        request: metrics_service_pb2.ExportMetricsServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> metrics_service_pb2.ExportMetricsServiceResponse:
        await self._received.add_metrics(request, request.SerializeToString())
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _LogsService(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, received: _Received) -> None:
        self._received = received

    async def Export(
        self,
        request: logs_service_pb2.ExportLogsServiceRequest,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> logs_service_pb2.ExportLogsServiceResponse:
        await self._received.add_logs(request, request.SerializeToString())
        return logs_service_pb2.ExportLogsServiceResponse()


class OtlpReceiver(_Receiver):
    """OTLP/gRPC: the collector's TraceService, MetricsService and LogsService on a grpc.aio
    server. `raw` holds each request re-serialized, which is byte for byte what protobuf
    would put on the wire for it (gRPC compression, if any, is undone by grpc)."""

    def __init__(self) -> None:
        super().__init__()
        self._server: grpc.aio.Server | None = None

    async def start(self) -> None:
        server = grpc.aio.server()
        # The generated add_*_to_server functions are untyped; the servicers are the
        # official definitions, so an exporter sees exactly a collector's services.
        add = (
            (trace_service_pb2_grpc.add_TraceServiceServicer_to_server, _TraceService),
            (metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server, _MetricsService),
            (logs_service_pb2_grpc.add_LogsServiceServicer_to_server, _LogsService),
        )
        for add_to_server, servicer in add:
            add_to_server(servicer(self._received), server)  # type: ignore[no-untyped-call]
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self._server = server
        self._endpoint = f"http://127.0.0.1:{port}"

    async def aclose(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()


class OtlpHttpReceiver(_Receiver):
    """OTLP/HTTP with protobuf bodies: POST /v1/traces, /v1/metrics and /v1/logs on aiohttp.

    `raw` holds the request bodies as sent, decompressed if gzip or deflate.
    JSON bodies are refused with 415, as the exporters under test send protobuf.
    """

    def __init__(self) -> None:
        super().__init__()
        self._runner: web.AppRunner | None = None
        self.content_types: list[str] = []
        """The Content-Type of every request, to tell which encoding the exporter used."""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_post("/v1/metrics", self._metrics)
        app.router.add_post("/v1/logs", self._logs)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self._runner = runner
        host, port = runner.addresses[0][:2]
        self._endpoint = f"http://{host}:{port}"

    async def aclose(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _body(self, request: web.Request) -> bytes:
        self.content_types.append(request.content_type)
        if request.content_type != "application/x-protobuf":
            raise web.HTTPUnsupportedMediaType(text="only application/x-protobuf is accepted")
        body = await request.read()
        encoding = request.headers.get("Content-Encoding", "")
        if encoding == "gzip":
            return gzip.decompress(body)
        if encoding == "deflate":
            return zlib.decompress(body)
        return body

    @staticmethod
    def _answer(message: Any) -> web.Response:
        return web.Response(body=message.SerializeToString(), content_type="application/x-protobuf")

    async def _traces(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        parsed = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        await self._received.add_traces(parsed, body)
        return self._answer(trace_service_pb2.ExportTraceServiceResponse())

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        parsed = metrics_service_pb2.ExportMetricsServiceRequest.FromString(body)
        await self._received.add_metrics(parsed, body)
        return self._answer(metrics_service_pb2.ExportMetricsServiceResponse())

    async def _logs(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        parsed = logs_service_pb2.ExportLogsServiceRequest.FromString(body)
        await self._received.add_logs(parsed, body)
        return self._answer(logs_service_pb2.ExportLogsServiceResponse())
