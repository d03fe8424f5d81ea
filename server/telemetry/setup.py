"""Tracing and metrics for one server, from a [telemetry] section and the standard OTEL_* variables.

The providers stay on the `Telemetry` object instead of being installed
globally: OpenTelemetry lets a process set its global providers once, and
tests start many servers in one process. Callers hand `tracer` and `meter`
around explicitly.

Everything is read from the `env` mapping given to `Telemetry.start` (normally
`os.environ`): OTEL_SDK_DISABLED, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES,
OTEL_TRACES_SAMPLER(_ARG), OTEL_METRICS_EXEMPLAR_FILTER, and
OTEL_EXPORTER_OTLP_[TRACES_|METRICS_]ENDPOINT, _PROTOCOL and _HEADERS. The
exporters and processors read their finer settings (certificates, compression,
timeouts, OTEL_BSP_*) from the process environment themselves, and the SDK's
resource detector adds the process's OTEL_RESOURCE_ATTRIBUTES under the ones
read from `env`.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import prometheus_client
from opentelemetry import metrics, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    ExemplarFilter,
    MeterProvider,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import (
    MetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.re import parse_env_headers

from aiproc.server.config import TelemetryConfig
from aiproc.server.telemetry.histograms import Histograms
from aiproc.server.telemetry.tracer import Sampling, Tracer

__all__ = ["Telemetry"]

log = logging.getLogger(__name__)

_SCOPE = "aiproc"
_PROTOCOLS = ("grpc", "http/protobuf")

_Signal = Literal["traces", "metrics"]


@dataclass(frozen=True, slots=True)
class _OtlpTarget:
    """Where and how one signal is exported; None leaves the choice to the exporter."""

    protocol: str
    endpoint: str | None
    headers: dict[str, str] | None


class Telemetry:
    """The tracer and meter of one server, and what it takes to flush and stop them."""

    def __init__(
        self,
        *,
        tracer: Tracer | None,
        span_processor: SpanProcessor | None,
        meter_provider: MeterProvider | None,
        histograms: Histograms | None,
        prometheus: _PrometheusEndpoint | None,
        record_content: bool,
    ) -> None:
        self._span_processor = span_processor
        self._meter_provider = meter_provider
        self._histograms = histograms
        self._prometheus = prometheus
        self._record_content = record_content
        self._tracer: trace.Tracer = tracer if tracer is not None else trace.NoOpTracer()
        self._meter: metrics.Meter = (
            meter_provider.get_meter(_SCOPE) if meter_provider else metrics.NoOpMeter(_SCOPE)
        )
        self._stopped = False

    @classmethod
    def start(
        cls,
        config: TelemetryConfig,
        *,
        env: Mapping[str, str],
        span_exporter: SpanExporter | None = None,
        metric_readers: Sequence[MetricReader] = (),
    ) -> Telemetry:
        """Builds what `config` and `env` ask for, and no SDK object at all when nothing is on.

        A `span_exporter` replaces OTLP (spans reach it unbatched) and turns
        tracing on; `metric_readers` are added to the meter provider. Raises
        OSError when the Prometheus endpoint cannot listen.
        """
        disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
        otlp = span_exporter is None and (
            config.enabled
            or bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
            or bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        )
        tracing = otlp or span_exporter is not None
        if disabled or not (tracing or metric_readers or config.prometheus_listen):
            return cls(
                tracer=None,
                span_processor=None,
                meter_provider=None,
                histograms=None,
                prometheus=None,
                record_content=False,
            )
        resource = _resource(config, env)
        prometheus = (
            _PrometheusEndpoint(config.prometheus_listen) if config.prometheus_listen else None
        )
        try:
            readers = list(metric_readers)
            if prometheus is not None:
                readers.append(PrometheusMetricReader(registry=prometheus.registry))
            if otlp:
                exporter = _metric_exporter(_otlp_target(config, env, "metrics"))
                interval = config.metrics_interval * 1000
                readers.append(
                    PeriodicExportingMetricReader(exporter, export_interval_millis=interval)
                )
            span_processor = _span_processor(config, env, span_exporter) if tracing else None
            exemplar_filter = _exemplar_filter(env)
            meter_provider = (
                MeterProvider(
                    metric_readers=readers,
                    resource=resource,
                    shutdown_on_exit=False,
                    exemplar_filter=exemplar_filter,
                )
                if readers
                else None
            )
            # Exemplars need the measurement's context: only SDK histograms keep them.
            histograms = None
            if meter_provider is not None and isinstance(exemplar_filter, AlwaysOffExemplarFilter):
                histograms = Histograms(resource, InstrumentationScope(_SCOPE))
                for reader in readers:
                    histograms.attach(reader)
        except BaseException:
            if prometheus is not None:
                prometheus.stop()
            raise
        tracer = (
            Tracer(_sampler(config, env), resource, InstrumentationScope(_SCOPE), span_processor)
            if span_processor is not None
            else None
        )
        return cls(
            tracer=tracer,
            span_processor=span_processor,
            meter_provider=meter_provider,
            histograms=histograms,
            prometheus=prometheus,
            record_content=config.record_content and tracing,
        )

    @property
    def tracer(self) -> trace.Tracer:
        """The server's tracer; the API's no-op tracer when tracing is off."""
        return self._tracer

    @property
    def meter(self) -> metrics.Meter:
        """The server's meter; the API's no-op meter when no metric reader is configured."""
        return self._meter

    @property
    def histograms(self) -> Histograms | None:
        """The meter's histograms aggregated by aiproc; None when off or when exemplars are kept."""
        return self._histograms

    @property
    def tracing(self) -> bool:
        """Whether spans are recorded and exported."""
        return self._span_processor is not None

    @property
    def record_content(self) -> bool:
        """Whether prompt and completion text may go on spans (configured, and tracing on)."""
        return self._record_content

    @property
    def prometheus_port(self) -> int | None:
        """The port the Prometheus endpoint listens on (useful with port 0); None without one."""
        return self._prometheus.port if self._prometheus else None

    def shutdown(self) -> None:
        """Exports what is buffered, then stops exporters and the Prometheus endpoint; idempotent.

        Blocks for up to the exporters' timeouts when the collector is slow or
        unreachable, so call it from a thread when an event loop must keep running.
        """
        if self._stopped:
            return
        self._stopped = True
        if self._prometheus is not None:
            self._prometheus.stop()
        if self._span_processor is not None:
            self._span_processor.shutdown()
        if self._meter_provider is not None:
            self._meter_provider.shutdown()

    def __repr__(self) -> str:
        metrics_state = "on" if self._meter_provider is not None else "off"
        port = f" prometheus=:{self.prometheus_port}" if self._prometheus else ""
        state = " stopped" if self._stopped else ""
        tracing = "on" if self.tracing else "off"
        return f"<Telemetry tracing={tracing} metrics={metrics_state}{port}{state}>"


def _span_processor(
    config: TelemetryConfig, env: Mapping[str, str], span_exporter: SpanExporter | None
) -> SpanProcessor:
    if span_exporter is not None:
        return SimpleSpanProcessor(span_exporter)
    return BatchSpanProcessor(_span_exporter(_otlp_target(config, env, "traces")))


def _resource(config: TelemetryConfig, env: Mapping[str, str]) -> Resource:
    attributes = _resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    service_name = env.get("OTEL_SERVICE_NAME") or attributes.get("service.name")
    attributes["service.name"] = service_name or config.service_name
    return Resource.create(attributes)


def _resource_attributes(text: str) -> dict[str, str]:
    """key=value pairs separated by commas, values percent-decoded, as the spec defines."""
    attributes: dict[str, str] = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = urllib.parse.unquote(value.strip())
        elif item.strip():
            log.warning("OTEL_RESOURCE_ATTRIBUTES: ignored %r (expected key=value)", item.strip())
    return attributes


def _sampler(config: TelemetryConfig, env: Mapping[str, str]) -> Sampling:
    name = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    default = Sampling(TraceIdRatioBased(config.sampler_ratio), parent_based=True)
    root: Sampler
    if not name:
        return default
    kind = name.removeprefix("parentbased_")
    if kind == "always_on":
        root = ALWAYS_ON
    elif kind == "always_off":
        root = ALWAYS_OFF
    elif kind == "traceidratio":
        root = TraceIdRatioBased(_sampler_ratio(env.get("OTEL_TRACES_SAMPLER_ARG")))
    else:
        # The spec asks for a warning and the default, not a failure, on unknown values.
        log.warning("OTEL_TRACES_SAMPLER: unsupported sampler %r; using [telemetry] sampler", name)
        return default
    return Sampling(root, parent_based=name.startswith("parentbased_"))


def _sampler_ratio(text: str | None) -> float:
    if text is None:
        return 1.0
    try:
        ratio = float(text)
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= 1.0:
        log.warning("OTEL_TRACES_SAMPLER_ARG: expected a ratio in [0, 1], got %r; using 1", text)
        return 1.0
    return ratio


def _exemplar_filter(env: Mapping[str, str]) -> ExemplarFilter:
    """OTEL_METRICS_EXEMPLAR_FILTER's filter; none by default, unlike the SDK's trace_based.

    With every task traced, trace_based attaches an exemplar to each measurement:
    about a quarter of the cost of recording the service's metrics, for data
    few backends show. Set the variable to trace_based to have them.
    """
    name = env.get("OTEL_METRICS_EXEMPLAR_FILTER", "").strip().lower()
    if name == "trace_based":
        return TraceBasedExemplarFilter()
    if name == "always_on":
        return AlwaysOnExemplarFilter()
    if name not in ("", "always_off"):
        log.warning("OTEL_METRICS_EXEMPLAR_FILTER: unsupported filter %r; no exemplars", name)
    return AlwaysOffExemplarFilter()


def _otlp_target(config: TelemetryConfig, env: Mapping[str, str], signal: _Signal) -> _OtlpTarget:
    specific = f"OTEL_EXPORTER_OTLP_{signal.upper()}_"
    protocol = (
        env.get(specific + "PROTOCOL") or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or ""
    ).strip()
    if protocol not in _PROTOCOLS:
        if protocol:
            log.warning(
                "OTLP protocol %r is not supported; using %s", protocol, config.otlp_protocol
            )
        protocol = config.otlp_protocol
    endpoint = env.get(specific + "ENDPOINT") or None
    if endpoint is None:
        base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or config.otlp_endpoint or None
        # Over HTTP a shared endpoint is a base URL each signal appends its path to;
        # over gRPC it is the address itself.
        if base is not None and protocol == "http/protobuf":
            base = f"{base.rstrip('/')}/v1/{signal}"
        endpoint = base
    headers = env.get(specific + "HEADERS") or env.get("OTEL_EXPORTER_OTLP_HEADERS")
    return _OtlpTarget(
        protocol, endpoint, dict(parse_env_headers(headers, liberal=True)) if headers else None
    )


# The exporter modules are imported when needed: each pulls in its own
# transport (grpc or requests), and most runs use one protocol or none.


def _span_exporter(target: _OtlpTarget) -> SpanExporter:
    if target.protocol == "grpc":
        from aiproc.server.telemetry.span_exporter import GrpcSpanExporter

        return GrpcSpanExporter(endpoint=target.endpoint, headers=target.headers)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
        OTLPSpanExporter as HttpSpanExporter,
    )

    return HttpSpanExporter(endpoint=target.endpoint, headers=target.headers)


def _metric_exporter(target: _OtlpTarget) -> MetricExporter:
    if target.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
            OTLPMetricExporter as GrpcMetricExporter,
        )

        return GrpcMetricExporter(endpoint=target.endpoint, headers=target.headers)
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
        OTLPMetricExporter as HttpMetricExporter,
    )

    return HttpMetricExporter(endpoint=target.endpoint, headers=target.headers)


class _PrometheusEndpoint:
    """A /metrics endpoint on its own registry and thread."""

    def __init__(self, listen: str) -> None:
        host, _, port = listen.rpartition(":")
        # A registry of its own, so that several servers in one process
        # (tests) do not register their collectors in the same place.
        self.registry = prometheus_client.CollectorRegistry()
        self._server, self._thread = prometheus_client.start_http_server(
            int(port), addr=host.strip("[]"), registry=self.registry
        )

    @property
    def port(self) -> int:
        return self._server.server_port

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
