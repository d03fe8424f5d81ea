"""Explicit-bucket histograms aggregated here and exported by the SDK's metric readers.

An SDK `Histogram.record` costs 8-15 µs: it builds a Measurement, cleans and
hashes its attributes, finds the stream of each view and aggregates under
locks. A task records six, and a profile of the traced server put them at 5%
of the event loop's time, the largest part of what telemetry costs it. Here a
measurement is a bisect, a dict lookup on a tuple of attributes and a few
additions under one lock: about 1 µs.

The SDK (1.45) has no public way to hand its readers points aggregated
elsewhere (the specification's MetricProducer), so `Histograms.attach` wraps
the collect callback that the MeterProvider gives each reader
(`MetricReader._collect`) and adds these histograms to what it returns, in
the meter's scope. The rest stays the SDK's: periodic export, Prometheus
scrapes, each reader's temporality. The points are the ones an SDK histogram
would give: tests/telemetry/test_histograms.py records the same measurements
through both and compares what cumulative and delta readers receive.

Exemplars are not kept (Telemetry uses SDK histograms when
OTEL_METRICS_EXEMPLAR_FILTER asks for them), nor views (the service has none).
"""

from __future__ import annotations

import logging
import math
import threading
from bisect import bisect_left
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from time import time_ns

from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    Metric,
    MetricReader,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.metrics.export import (
    Histogram as HistogramData,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.types import AttributeValue

__all__ = ["CARDINALITY_LIMIT", "Attributes", "Histogram", "Histograms", "attributes_of"]

Attributes = tuple[str | None, ...]
"""A point's attributes flattened to (key, value, key, value...); a None value leaves its key out.

A tuple is hashed where a dict would have to be cleaned, copied and frozen."""

CARDINALITY_LIMIT = 2000
"""Attribute sets a histogram keeps before the rest go to one overflow point, as in the SDK."""

log = logging.getLogger(__name__)

_OVERFLOW: Attributes = ("otel.metric.overflow",)
"""The overflow point's key (odd-length, so no flattened pair list can equal it)."""

_Collect = Callable[..., MetricsData | None]


def attributes_of(flat: Attributes) -> dict[str, AttributeValue]:
    """The attributes dict a flattened key stands for."""
    if flat == _OVERFLOW:
        return {"otel.metric.overflow": True}
    pairs = zip(flat[::2], flat[1::2], strict=True)
    return {key: value for key, value in pairs if key is not None and value is not None}


@dataclass(slots=True)
class _Point:
    """One attribute set's aggregate within a window."""

    start: int
    buckets: list[int]
    sum: float = 0.0
    min: float = math.inf
    max: float = -math.inf

    def copy(self) -> _Point:
        return _Point(self.start, list(self.buckets), self.sum, self.min, self.max)


class _Window:
    """The points a reader collects: all of them (cumulative) or those since its last collection.

    All cumulative readers share one window; each delta reader has its own.
    """

    __slots__ = ("opened", "points")

    def __init__(self) -> None:
        self.points: dict[Attributes, _Point] = {}
        self.opened: int | None = None
        """The last collection's time, which a point starts at; None before the first."""


class Histogram:
    """An explicit-bucket histogram: bucket counts, sum, min and max per attribute set."""

    def __init__(self, name: str, unit: str, description: str, boundaries: Sequence[float]) -> None:
        self.name = name
        self.unit = unit
        self.description = description
        self._boundaries = tuple(boundaries)
        self._windows: list[_Window] = []
        # Recorded on the event loop, collected on an exporter's thread.
        self._lock = threading.Lock()

    def record(self, value: float, attributes: Attributes = ()) -> None:
        """Adds `value` to the point of `attributes` in every window; a negative or infinite one
        (or NaN) is ignored with a warning, as the SDK does."""
        if not 0 <= value < math.inf:
            log.warning(
                "histogram %s: ignored %r, not a finite non-negative value", self.name, value
            )
            return
        bucket = bisect_left(self._boundaries, value)
        with self._lock:
            for window in self._windows:
                point = window.points.get(attributes)
                if point is None:
                    point = self._open(window, attributes)
                point.buckets[bucket] += 1
                point.sum += value
                if value < point.min:
                    point.min = value
                if value > point.max:
                    point.max = value

    def _open(self, window: _Window, attributes: Attributes) -> _Point:
        if len(window.points) >= CARDINALITY_LIMIT:
            attributes = _OVERFLOW
            if attributes in window.points:
                return window.points[attributes]
        start = window.opened if window.opened is not None else time_ns()
        point = window.points[attributes] = _Point(start, [0] * (len(self._boundaries) + 1))
        return point

    def add_window(self) -> None:
        with self._lock:
            self._windows.append(_Window())

    def collect(self, window: int, temporality: AggregationTemporality, now: int) -> Metric | None:
        """The points of `window` at `now`, as a metric; None when it has none."""
        with self._lock:
            collected = self._windows[window]
            if temporality is AggregationTemporality.DELTA:
                points = collected.points
                collected.points = {}
            else:
                points = {key: point.copy() for key, point in collected.points.items()}
            collected.opened = now
        if not points:
            return None
        data_points = [
            HistogramDataPoint(
                attributes=attributes_of(key),
                start_time_unix_nano=point.start,
                time_unix_nano=now,
                count=sum(point.buckets),
                sum=point.sum,
                bucket_counts=tuple(point.buckets),
                explicit_bounds=self._boundaries,
                min=point.min,
                max=point.max,
                exemplars=[],
            )
            for key, point in points.items()
        ]
        return Metric(
            name=self.name,
            description=self.description,
            unit=self.unit,
            data=HistogramData(data_points=data_points, aggregation_temporality=temporality),
        )


class Histograms:
    """The histograms of one meter provider and the readers they are exported to."""

    def __init__(self, resource: Resource, scope: InstrumentationScope) -> None:
        self._resource = resource
        self._scope = scope
        self._histograms: list[Histogram] = []
        self._windows: list[bool] = []
        """Whether each window is a delta reader's; histograms have one of each, in this order."""
        self._lock = threading.Lock()

    def create(
        self, name: str, unit: str, description: str, boundaries: Sequence[float]
    ) -> Histogram:
        """A histogram exported to every attached reader."""
        with self._lock:
            histogram = Histogram(name, unit, description, boundaries)
            for _ in self._windows:
                histogram.add_window()
            self._histograms.append(histogram)
        return histogram

    def attach(self, reader: MetricReader) -> None:
        """Has `reader` export these histograms too; call once the MeterProvider has registered it.

        Raises RuntimeError when the reader has no collect callback (not registered,
        or an SDK whose readers no longer work this way).
        """
        collect: _Collect | None = getattr(reader, "_collect", None)
        temporalities = getattr(reader, "_instrument_class_temporality", None)
        if collect is None or not isinstance(temporalities, dict):
            raise RuntimeError(f"cannot export histograms to {reader!r}: no collect callback")
        # Keyed by the SDK's private subclass of its public Histogram.
        temporality: AggregationTemporality = next(
            value for kind, value in temporalities.items() if issubclass(kind, SdkHistogram)
        )
        window = self._window(temporality is AggregationTemporality.DELTA)

        def collect_with_histograms(
            reader: MetricReader, timeout_millis: float = 10_000
        ) -> MetricsData | None:
            return self._add(collect(reader, timeout_millis=timeout_millis), window, temporality)

        # The SDK annotates _collect as taking a temporality and returning metrics,
        # but calls it with (reader, timeout_millis=...) for MetricsData.
        reader._collect = collect_with_histograms  # type: ignore[assignment]

    def _window(self, delta: bool) -> int:
        """The index of a new window, or of the cumulative one when there is one already."""
        with self._lock:
            if not delta and False in self._windows:
                return self._windows.index(False)
            self._windows.append(delta)
            for histogram in self._histograms:
                histogram.add_window()
            return len(self._windows) - 1

    def _add(
        self, data: MetricsData | None, window: int, temporality: AggregationTemporality
    ) -> MetricsData | None:
        now = time_ns()
        with self._lock:
            histograms = list(self._histograms)
        metrics = [
            metric
            for histogram in histograms
            if (metric := histogram.collect(window, temporality, now)) is not None
        ]
        if not metrics:
            return data
        if data is None or not data.resource_metrics:
            return MetricsData(
                resource_metrics=[
                    ResourceMetrics(
                        resource=self._resource,
                        scope_metrics=[self._scope_metrics(metrics)],
                        schema_url=self._resource.schema_url,
                    )
                ]
            )
        # One meter provider has one resource: the SDK's data has one ResourceMetrics.
        first, *others = data.resource_metrics
        scopes = list(first.scope_metrics)
        for index, scope in enumerate(scopes):
            if scope.scope == self._scope:
                scopes[index] = ScopeMetrics(
                    scope.scope, [*scope.metrics, *metrics], scope.schema_url
                )
                break
        else:
            scopes.append(self._scope_metrics(metrics))
        return MetricsData(
            resource_metrics=[ResourceMetrics(first.resource, scopes, first.schema_url), *others]
        )

    def _scope_metrics(self, metrics: list[Metric]) -> ScopeMetrics:
        # As the SDK builds it, schema_url None included.
        return ScopeMetrics(scope=self._scope, metrics=metrics, schema_url=self._scope.schema_url)  # type: ignore[arg-type]
