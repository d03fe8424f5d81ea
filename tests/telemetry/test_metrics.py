"""Metrics: each instrument records under its name, unit and attributes, read back in memory."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.metrics import Meter, NoOpMeter
from opentelemetry.sdk.metrics import Counter, ObservableCounter
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
    Sum,
)

from aiproc.server.config import TelemetryConfig
from aiproc.server.telemetry.histograms import Histograms
from aiproc.server.telemetry.metrics import BREAKER_STATES, Metrics
from aiproc.server.telemetry.setup import Telemetry


@dataclass(frozen=True)
class Point:
    unit: str
    attributes: dict[str, Any]
    value: float | None = None
    count: int | None = None
    sum: float | None = None
    bounds: tuple[float, ...] = ()


class Recorded:
    """Metrics over a real meter provider whose points the test reads on demand."""

    def __init__(
        self, meter: Meter, reader: InMemoryMetricReader, histograms: Histograms | None
    ) -> None:
        self._reader = reader
        self.depths: dict[str, int] = {}
        self.breakers: dict[str, int] = {}
        self.metrics = Metrics(
            meter, lambda: dict(self.depths), lambda: dict(self.breakers), histograms
        )

    def points(self) -> dict[str, list[Point]]:
        data = self._reader.get_metrics_data()
        found: dict[str, list[Point]] = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    for point in metric.data.data_points:
                        attributes = dict(point.attributes or {})
                        unit = metric.unit or ""
                        if isinstance(point, HistogramDataPoint):
                            bounds = tuple(point.explicit_bounds)
                            found.setdefault(metric.name, []).append(
                                Point(unit, attributes, None, point.count, point.sum, bounds)
                            )
                        elif isinstance(point, NumberDataPoint):
                            found.setdefault(metric.name, []).append(
                                Point(unit, attributes, value=point.value)
                            )
        return found

    def point(self, name: str, **attributes: Any) -> Point:
        """The one point of `name` whose attributes are exactly `attributes`."""
        (point,) = (p for p in self.points()[name] if p.attributes == attributes)
        return point


@pytest.fixture(params=["aggregated", "on the meter"])
def recorded(request: pytest.FixtureRequest) -> Iterator[Recorded]:
    """Metrics on a Telemetry started with only an in-memory reader.

    Histograms are aggregated by the service (as it runs without exemplars) or
    recorded on the meter (as with exemplars).
    """
    reader = InMemoryMetricReader()
    telemetry = Telemetry.start(TelemetryConfig(), env={}, metric_readers=[reader])
    assert telemetry.histograms is not None
    histograms = telemetry.histograms if request.param == "aggregated" else None
    yield Recorded(telemetry.meter, reader, histograms)
    telemetry.shutdown()


def test_a_finished_task_is_counted_by_outcome_with_its_durations(recorded: Recorded) -> None:
    recorded.metrics.task_finished("succeeded", None, queue_wait=0.01, processing=1.0)
    recorded.metrics.task_finished("succeeded", None, queue_wait=0.03, processing=2.0)
    recorded.metrics.task_finished("failed", "PROVIDER_UNAVAILABLE", queue_wait=0.5, processing=3)
    recorded.metrics.task_finished("cancelled", None, queue_wait=4.0, processing=None)

    assert recorded.point("aiproc.tasks", outcome="succeeded").value == 2
    failed = recorded.point(
        "aiproc.tasks", outcome="failed", **{"error.type": "PROVIDER_UNAVAILABLE"}
    )
    assert (failed.value, failed.unit) == (1, "{task}")
    assert recorded.point("aiproc.tasks", outcome="cancelled").value == 1
    wait = recorded.point("aiproc.task.queue_wait")
    assert (wait.count, wait.unit) == (4, "s")
    assert wait.sum == pytest.approx(4.54)
    assert wait.bounds[0] == 0.001
    processing = {p.attributes["outcome"]: p for p in recorded.points()["aiproc.task.processing"]}
    assert set(processing) == {"succeeded", "failed"}
    assert (processing["succeeded"].count, processing["succeeded"].sum) == (2, 3.0)


def test_a_provider_call_records_its_duration_and_tokens_ours_and_genai(
    recorded: Recorded,
) -> None:
    metrics = recorded.metrics
    metrics.provider_call("primary", "openai", "gpt-4o", 0.5, "ok", 10, 5, None)
    metrics.provider_call("primary", "openai", "gpt-4o", 1.5, "ok", 20, 7, None)
    metrics.provider_call("backup", "azure_openai", "gpt-4o", 2.0, "error", None, None, "Timeout")

    ok = recorded.point("aiproc.provider.duration", provider="primary", outcome="ok")
    assert (ok.count, ok.sum, ok.unit) == (2, 2.0, "s")
    assert recorded.point("aiproc.provider.duration", provider="backup", outcome="error").count
    tokens = recorded.point("aiproc.provider.tokens", provider="primary", direction="input")
    assert (tokens.value, tokens.unit) == (30, "{token}")
    assert (
        recorded.point("aiproc.provider.tokens", provider="primary", direction="output").value == 12
    )
    assert {p.attributes["provider"] for p in recorded.points()["aiproc.provider.tokens"]} == {
        "primary"
    }

    call = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "gpt-4o",
    }
    usage = recorded.point("gen_ai.client.token.usage", **call, **{"gen_ai.token.type": "input"})
    assert (usage.count, usage.sum, usage.unit) == (2, 30, "{token}")
    assert usage.bounds[:3] == (1, 4, 16)
    assert recorded.point("gen_ai.client.operation.duration", **call).count == 2
    failed = recorded.point(
        "gen_ai.client.operation.duration",
        **call | {"gen_ai.provider.name": "azure.ai.openai", "error.type": "Timeout"},
    )
    assert (failed.count, failed.unit) == (1, "s")
    assert failed.bounds[:2] == (0.01, 0.02)


def test_counters_export_monotonic_sums_cumulative_or_delta_as_the_reader_asks() -> None:
    cumulative = InMemoryMetricReader()
    # What the OTLP exporter asks for with OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta.
    asked = {kind: AggregationTemporality.DELTA for kind in (Counter, ObservableCounter)}
    delta = InMemoryMetricReader(preferred_temporality=asked)
    telemetry = Telemetry.start(TelemetryConfig(), env={}, metric_readers=[cumulative, delta])
    try:
        metrics = Metrics(telemetry.meter, dict, dict)
        sums: dict[str, list[tuple[float, AggregationTemporality]]] = {"c": [], "d": []}
        for _ in range(2):
            metrics.task_finished("succeeded", None, queue_wait=None, processing=None)
            metrics.task_finished("succeeded", None, queue_wait=None, processing=None)
            for key, reader in (("c", cumulative), ("d", delta)):
                data = reader.get_metrics_data()
                assert data is not None
                (metric,) = data.resource_metrics[0].scope_metrics[0].metrics
                assert isinstance(metric.data, Sum)
                assert metric.data.is_monotonic
                (point,) = metric.data.data_points
                assert isinstance(point, NumberDataPoint)
                sums[key].append((point.value, metric.data.aggregation_temporality))
    finally:
        telemetry.shutdown()

    assert sums["c"] == [
        (2, AggregationTemporality.CUMULATIVE),
        (4, AggregationTemporality.CUMULATIVE),
    ]
    assert sums["d"] == [(2, AggregationTemporality.DELTA)] * 2


def test_retries_and_rate_limit_waits_are_counted(recorded: Recorded) -> None:
    recorded.metrics.retried()
    recorded.metrics.retried()
    recorded.metrics.rate_limit_waited()

    assert recorded.point("aiproc.retries").value == 2
    assert recorded.point("aiproc.rate_limit.waits").value == 1


def test_the_gauges_read_the_callbacks_at_each_collection(recorded: Recorded) -> None:
    recorded.depths.update(high=2, normal=5)
    recorded.breakers.update(primary=BREAKER_STATES["open"], backup=BREAKER_STATES["closed"])

    assert recorded.point("aiproc.queue.depth", priority="high").value == 2
    assert recorded.point("aiproc.queue.depth", priority="normal").value == 5
    assert recorded.point("aiproc.provider.breaker_state", provider="primary").value == 2
    assert recorded.point("aiproc.provider.breaker_state", provider="backup").value == 0

    recorded.depths["high"] = 0
    recorded.breakers["primary"] = BREAKER_STATES["half_open"]

    assert recorded.point("aiproc.queue.depth", priority="high").value == 0
    assert recorded.point("aiproc.provider.breaker_state", provider="primary").value == 1


def test_on_a_no_op_meter_every_method_works_and_no_callback_runs() -> None:
    def never() -> Mapping[str, int]:
        raise AssertionError("a no-op meter read a gauge")

    metrics = Metrics(NoOpMeter("test"), never, never)

    metrics.task_finished("failed", "INTERNAL", 0.1, 0.2)
    metrics.provider_call("p", "openai", "m", 0.1, "ok", 1, 2, None)
    metrics.retried()
    metrics.rate_limit_waited()
