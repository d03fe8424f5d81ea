"""Telemetry.start from config and OTEL_* variables: what is on, where it goes, what it flushes."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

import httpx
import pytest
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client.parser import text_string_to_metric_families

from aiproc.server.config import TelemetryConfig
from aiproc.server.telemetry.metrics import Metrics
from aiproc.server.telemetry.setup import Telemetry, _otlp_target
from tests.telemetry.otlp_receiver import OtlpHttpReceiver, OtlpReceiver

Start = Callable[..., Telemetry]


@pytest.fixture
def start() -> Iterator[Start]:
    """Telemetry.start with an empty environment by default; shuts every one down at the end."""
    started: list[Telemetry] = []

    def start(
        config: TelemetryConfig | None = None, env: Mapping[str, str] | None = None, **kw: Any
    ) -> Telemetry:
        telemetry = Telemetry.start(config or TelemetryConfig(), env=env or {}, **kw)
        started.append(telemetry)
        return telemetry

    yield start
    for telemetry in started:
        telemetry.shutdown()


def caller_span(sampled: bool) -> NonRecordingSpan:
    """A caller's span, sampled or not, as propagation from its request would give it."""
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    return NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=flags))


# Off, and no-op


def test_with_nothing_configured_the_tracer_and_meter_are_the_apis_no_ops(start: Start) -> None:
    telemetry = start(TelemetryConfig(record_content=True))

    assert isinstance(telemetry.tracer, trace.NoOpTracer)
    assert isinstance(telemetry.meter, metrics.NoOpMeter)
    assert not telemetry.tracing
    assert not telemetry.record_content
    assert telemetry.prometheus_port is None
    with telemetry.tracer.start_as_current_span("nothing") as span:
        assert not span.is_recording()


@pytest.mark.parametrize("value", ["true", "TRUE", " True "])
def test_otel_sdk_disabled_turns_off_even_what_is_configured(start: Start, value: str) -> None:
    config = TelemetryConfig(enabled=True, prometheus_listen="127.0.0.1:0", record_content=True)
    env = {"OTEL_SDK_DISABLED": value, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9"}

    telemetry = start(config, env, span_exporter=InMemorySpanExporter())

    assert isinstance(telemetry.tracer, trace.NoOpTracer)
    assert isinstance(telemetry.meter, metrics.NoOpMeter)
    assert (telemetry.tracing, telemetry.record_content) == (False, False)
    assert telemetry.prometheus_port is None


def test_otel_sdk_disabled_other_than_true_disables_nothing(start: Start) -> None:
    telemetry = start(env={"OTEL_SDK_DISABLED": "false"}, span_exporter=InMemorySpanExporter())

    assert telemetry.tracing


# Spans, resource and sampler


def test_a_span_exporter_turns_tracing_on_and_sees_each_span_as_it_ends(start: Start) -> None:
    exporter = InMemorySpanExporter()
    config = TelemetryConfig(service_name="aiproc-setup", record_content=True)
    telemetry = start(config, span_exporter=exporter)

    with telemetry.tracer.start_as_current_span("work"):
        pass

    (span,) = exporter.get_finished_spans()
    assert span.name == "work"
    assert span.resource.attributes["service.name"] == "aiproc-setup"
    assert (telemetry.tracing, telemetry.record_content) == (True, True)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, {"service.name": "from-config"}),
        (
            {"OTEL_RESOURCE_ATTRIBUTES": "service.name=attr, deployment.environment=prod%20eu"},
            {"service.name": "attr", "deployment.environment": "prod eu"},
        ),
        (
            {"OTEL_SERVICE_NAME": "env", "OTEL_RESOURCE_ATTRIBUTES": "service.name=attr,team=ai"},
            {"service.name": "env", "team": "ai"},
        ),
        ({"OTEL_RESOURCE_ATTRIBUTES": "malformed,team=ai"}, {"team": "ai"}),
    ],
)
def test_the_resource_comes_from_otel_variables_before_the_config(
    start: Start, env: dict[str, str], expected: dict[str, str]
) -> None:
    exporter = InMemorySpanExporter()
    telemetry = start(TelemetryConfig(service_name="from-config"), env, span_exporter=exporter)

    with telemetry.tracer.start_as_current_span("work"):
        pass

    attributes = dict(exporter.get_finished_spans()[0].resource.attributes)
    assert attributes | expected == attributes
    assert "malformed" not in attributes


@pytest.mark.parametrize(
    ("env", "ratio", "parent", "recorded"),
    [
        ({}, 1.0, None, True),
        ({}, 0.0, None, False),
        ({}, 0.0, True, True),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, 1.0, None, False),
        ({"OTEL_TRACES_SAMPLER": "always_off"}, 1.0, True, False),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_off"}, 1.0, True, True),
        ({"OTEL_TRACES_SAMPLER": "parentbased_always_on"}, 1.0, False, False),
        ({"OTEL_TRACES_SAMPLER": "ALWAYS_ON"}, 0.0, None, True),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}, 1.0, None, False),
        (
            {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"},
            1.0,
            True,
            True,
        ),
        ({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "x"}, 0.0, None, True),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, 0.0, None, False),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, 1.0, None, True),
    ],
)
def test_the_sampler_comes_from_otel_traces_sampler_else_the_configured_ratio(
    start: Start, env: dict[str, str], ratio: float, parent: bool | None, recorded: bool
) -> None:
    exporter = InMemorySpanExporter()
    config = TelemetryConfig(sampler_ratio=ratio)
    telemetry = start(config, env, span_exporter=exporter)
    context = None if parent is None else trace.set_span_in_context(caller_span(parent))

    with telemetry.tracer.start_as_current_span("work", context=context) as span:
        assert span.is_recording() is recorded

    assert len(exporter.get_finished_spans()) == int(recorded)


# Exemplars


@pytest.mark.parametrize(
    ("filter_name", "in_span", "outside_span"),
    [
        (None, 0, 0),
        ("always_off", 0, 0),
        ("trace_based", 1, 0),
        ("TRACE_BASED", 1, 0),
        ("always_on", 1, 1),
        ("sometimes", 0, 0),
    ],
)
def test_exemplars_are_off_unless_otel_metrics_exemplar_filter_asks_for_them(
    start: Start, filter_name: str | None, in_span: int, outside_span: int
) -> None:
    reader = InMemoryMetricReader()
    env = {} if filter_name is None else {"OTEL_METRICS_EXEMPLAR_FILTER": filter_name}
    telemetry = start(env=env, span_exporter=InMemorySpanExporter(), metric_readers=[reader])
    histogram = telemetry.meter.create_histogram("aiproc.test.duration")
    with telemetry.tracer.start_as_current_span("sampled"):
        histogram.record(1.0, {"where": "in span"})
    histogram.record(1.0, {"where": "outside"})

    data = reader.get_metrics_data()
    assert data is not None
    (metric,) = data.resource_metrics[0].scope_metrics[0].metrics
    exemplars = {
        dict(point.attributes or {})["where"]: len(point.exemplars)
        for point in metric.data.data_points
    }
    assert exemplars == {"in span": in_span, "outside": outside_span}
    # The service's histograms keep exemplars only on the meter's own instruments.
    assert (telemetry.histograms is None) == bool(in_span)


# OTLP: which exporter, which endpoint, and the flush at shutdown

Receiver = OtlpReceiver | OtlpHttpReceiver


def receiver_for(protocol: str) -> Receiver:
    return OtlpReceiver() if protocol == "grpc" else OtlpHttpReceiver()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("source", ["env", "config"])
async def test_spans_and_metrics_still_buffered_at_shutdown_reach_the_collector(
    start: Start, protocol: str, source: str
) -> None:
    async with receiver_for(protocol) as receiver:
        if source == "env":
            # The config asks for the other protocol: the variables win.
            other = "grpc" if protocol == "http/protobuf" else "http/protobuf"
            config = TelemetryConfig(otlp_protocol=other)
            env = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
            }
        else:
            config = TelemetryConfig(
                enabled=True, otlp_endpoint=receiver.endpoint, otlp_protocol=protocol
            )
            env = {}
        telemetry = start(replace(config, service_name="aiproc-flush"), env)
        assert telemetry.tracing
        with telemetry.tracer.start_as_current_span("buffered"):
            telemetry.meter.create_counter("aiproc.test.flushed").add(3)
        # Batches leave every 5 s and metrics every 10 s: only the shutdown sends them now.
        assert not receiver.spans
        assert not receiver.metrics

        # The exporters block, and the receiver answers on this loop.
        await asyncio.to_thread(telemetry.shutdown)

        assert [span.name for span in receiver.spans] == ["buffered"]
        assert receiver.spans[0].service_name == "aiproc-flush"
        (point,) = receiver.metrics["aiproc.test.flushed"]
        assert point.value == 3


async def test_signal_specific_variables_win_over_the_shared_ones(start: Start) -> None:
    async with OtlpReceiver() as grpc_receiver, OtlpHttpReceiver() as http_receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": grpc_receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{http_receiver.endpoint}/v1/traces",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
        }
        telemetry = start(env=env)
        with telemetry.tracer.start_as_current_span("to-http"):
            telemetry.meter.create_counter("aiproc.test.to_grpc").add(1)

        await asyncio.to_thread(telemetry.shutdown)

        assert [span.name for span in http_receiver.spans] == ["to-http"]
        assert not grpc_receiver.spans
        assert "aiproc.test.to_grpc" in grpc_receiver.metrics
        assert not http_receiver.metrics


@pytest.mark.parametrize(
    ("env", "config", "expected"),
    [
        ({}, TelemetryConfig(), ("grpc", None, None)),
        (
            {},
            TelemetryConfig(otlp_endpoint="http://c:4318/", otlp_protocol="http/protobuf"),
            ("http/protobuf", "http://c:4318/v1/traces", None),
        ),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://env:4317"},
            TelemetryConfig(otlp_endpoint="http://config:4317"),
            ("grpc", "http://env:4317", None),
        ),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
            TelemetryConfig(otlp_protocol="http/protobuf"),
            ("http/protobuf", None, None),
        ),
        (
            {"OTEL_EXPORTER_OTLP_HEADERS": "x-token=a%20b,x-team=ai"},
            TelemetryConfig(),
            ("grpc", None, {"x-token": "a b", "x-team": "ai"}),
        ),
        (
            {
                "OTEL_EXPORTER_OTLP_HEADERS": "x-token=shared",
                "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "x-token=traces",
            },
            TelemetryConfig(),
            ("grpc", None, {"x-token": "traces"}),
        ),
    ],
)
def test_the_trace_target_follows_the_spec_precedence(
    env: dict[str, str], config: TelemetryConfig, expected: tuple[str, str | None, Any]
) -> None:
    target = _otlp_target(config, env, "traces")

    assert (target.protocol, target.endpoint, target.headers) == expected


def test_an_unsupported_protocol_is_reported_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        target = _otlp_target(
            TelemetryConfig(), {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "metrics"
        )

    assert target.protocol == "grpc"
    assert "http/json" in caplog.text


# Prometheus


async def scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Each sample of /metrics by name and labels, the OpenTelemetry scope labels left out."""
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/metrics")
    response.raise_for_status()
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if not k.startswith("otel_scope")}
            samples[(sample.name, frozenset(labels.items()))] = sample.value
    return samples


async def test_the_prometheus_endpoint_serves_the_service_metrics(start: Start) -> None:
    telemetry = start(TelemetryConfig(prometheus_listen="127.0.0.1:0"))
    depths = {"high": 3, "normal": 7}
    service_metrics = Metrics(
        telemetry.meter, lambda: depths, lambda: {"primary": 2}, telemetry.histograms
    )
    service_metrics.task_finished("succeeded", None, 0.2, 1.5)
    assert telemetry.prometheus_port
    assert not telemetry.tracing

    samples = await scrape(telemetry.prometheus_port)

    assert samples[("aiproc_queue_depth", frozenset({("priority", "high")}))] == 3
    assert samples[("aiproc_queue_depth", frozenset({("priority", "normal")}))] == 7
    assert samples[("aiproc_provider_breaker_state", frozenset({("provider", "primary")}))] == 2
    assert samples[("aiproc_tasks_total", frozenset({("outcome", "succeeded")}))] == 1
    processing = frozenset({("outcome", "succeeded")})
    assert samples[("aiproc_task_processing_seconds_sum", processing)] == 1.5
    assert samples[("aiproc_task_processing_seconds_count", processing)] == 1
    assert samples[("aiproc_task_processing_seconds_bucket", processing | {("le", "1.28")})] == 0
    assert samples[("aiproc_task_processing_seconds_bucket", processing | {("le", "2.56")})] == 1
    assert samples[("aiproc_task_queue_wait_seconds_count", frozenset())] == 1
    depths["high"] = 0
    assert (await scrape(telemetry.prometheus_port))[
        ("aiproc_queue_depth", frozenset({("priority", "high")}))
    ] == 0


async def test_two_servers_in_one_process_have_their_own_prometheus_endpoints(
    start: Start,
) -> None:
    first, second = (start(TelemetryConfig(prometheus_listen="127.0.0.1:0")) for _ in range(2))
    first.meter.create_counter("aiproc.test.first").add(1)
    second.meter.create_counter("aiproc.test.second").add(1)
    assert first.prometheus_port
    assert second.prometheus_port

    first_names = {name for name, _ in await scrape(first.prometheus_port)}
    second_names = {name for name, _ in await scrape(second.prometheus_port)}

    assert "aiproc_test_first_total" in first_names - second_names
    assert "aiproc_test_second_total" in second_names - first_names


async def test_shutdown_stops_the_prometheus_endpoint_and_can_be_called_again(
    start: Start,
) -> None:
    telemetry = start(TelemetryConfig(prometheus_listen="127.0.0.1:0"))
    port = telemetry.prometheus_port
    assert port

    telemetry.shutdown()
    telemetry.shutdown()

    with pytest.raises(httpx.ConnectError):
        await scrape(port)
    assert "stopped" in repr(telemetry)


def test_a_prometheus_port_in_use_fails_the_start(start: Start) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        with pytest.raises(OSError):  # noqa: PT011 - the errno varies by platform
            start(TelemetryConfig(prometheus_listen=f"127.0.0.1:{port}"))
