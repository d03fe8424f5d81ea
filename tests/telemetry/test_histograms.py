"""Histograms aggregated by the service: readers receive what an SDK histogram would give them.

Each scenario records the same measurements on an SDK histogram and on ours,
in one meter provider, and compares the points every reader collects.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import Histogram as SdkHistogram
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
    MetricsData,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from aiproc.server.telemetry.histograms import (
    CARDINALITY_LIMIT,
    Attributes,
    Histogram,
    Histograms,
    attributes_of,
)

BOUNDS = (0.01, 0.1, 1.0, 10.0)
CUMULATIVE = AggregationTemporality.CUMULATIVE
DELTA = AggregationTemporality.DELTA
SCOPE = InstrumentationScope("aiproc")
RESOURCE = Resource({"service.name": "aiproc-test"})


def reader_for(temporality: AggregationTemporality) -> InMemoryMetricReader:
    return InMemoryMetricReader(preferred_temporality={SdkHistogram: temporality})


@dataclass(frozen=True)
class Comparable:
    """A point without its timestamps, which the two sides take a moment apart."""

    attributes: dict[str, Any]
    count: int
    sum: float
    bucket_counts: tuple[int, ...]
    explicit_bounds: tuple[float, ...]
    min: float
    max: float
    exemplars: int


def comparable(metric: Metric) -> tuple[str, str | None, str | None, Any, list[Comparable]]:
    points = []
    for point in metric.data.data_points:
        assert isinstance(point, HistogramDataPoint)
        points.append(
            Comparable(
                dict(point.attributes or {}),
                point.count,
                point.sum,
                tuple(point.bucket_counts),
                tuple(point.explicit_bounds),
                point.min,
                point.max,
                len(point.exemplars),
            )
        )
    points.sort(key=lambda p: sorted(p.attributes.items()))
    temporality = getattr(metric.data, "aggregation_temporality", None)
    return metric.description, metric.unit, type(metric.data).__name__, temporality, points


class Pair:
    """An SDK histogram and ours, on one meter provider, fed the same measurements."""

    def __init__(self, *readers: InMemoryMetricReader, bounds: tuple[float, ...] = BOUNDS) -> None:
        self.provider = MeterProvider(metric_readers=readers, resource=RESOURCE)
        self.histograms = Histograms(RESOURCE, SCOPE)
        for reader in readers:
            self.histograms.attach(reader)
        self.meter = self.provider.get_meter("aiproc")
        self.sdk = self.meter.create_histogram(
            "sdk", unit="s", description="d", explicit_bucket_boundaries_advisory=bounds
        )
        self.ours = self.histograms.create("ours", "s", "d", bounds)

    def record(self, value: float, attributes: Attributes = ()) -> None:
        self.sdk.record(value, attributes_of(attributes))
        self.ours.record(value, attributes)

    def collect(self, reader: InMemoryMetricReader) -> dict[str, Metric]:
        """What `reader` collects now, by metric name."""
        data = reader.get_metrics_data()
        if data is None:
            return {}
        (resource,) = data.resource_metrics
        assert resource.resource == RESOURCE
        (scope,) = resource.scope_metrics
        assert scope.scope == SCOPE
        return {metric.name: metric for metric in scope.metrics}

    def assert_alike(self, reader: InMemoryMetricReader) -> dict[str, Metric]:
        metrics = self.collect(reader)
        assert metrics.keys() in ({"ours", "sdk"}, set())
        if metrics:
            assert comparable(metrics["ours"]) == comparable(metrics["sdk"])
        return metrics


@pytest.fixture
def provider_pairs() -> Iterator[list[Pair]]:
    pairs: list[Pair] = []
    yield pairs
    for pair in pairs:
        pair.provider.shutdown()


def test_values_fall_in_the_buckets_the_sdk_puts_them_in(provider_pairs: list[Pair]) -> None:
    reader = reader_for(CUMULATIVE)
    pair = Pair(reader)
    provider_pairs.append(pair)
    # On each boundary (an upper bound is inside its bucket), between and beyond; what is
    # negative or not finite is ignored.
    for value in (0.0, 0.01, 0.010001, 0.1, 0.5, 1.0, 10.0, 10.5, 1e9, 2):
        pair.record(value)
    for value in (-3.0, -0.0001, math.inf, math.nan):
        pair.record(value)

    metrics = pair.assert_alike(reader)

    (point,) = metrics["ours"].data.data_points
    assert isinstance(point, HistogramDataPoint)
    assert tuple(point.bucket_counts) == (2, 2, 2, 2, 2)
    assert (point.min, point.max) == (0.0, 1e9)


@pytest.mark.parametrize("temporality", [CUMULATIVE, DELTA])
def test_collections_give_what_the_sdk_gives_as_the_reader_asks(
    provider_pairs: list[Pair], temporality: AggregationTemporality
) -> None:
    reader = reader_for(temporality)
    pair = Pair(reader)
    provider_pairs.append(pair)
    starts: list[dict[str, int]] = []
    times: list[int] = []
    windows: list[list[tuple[float, Attributes]]] = [
        [(0.5, ("outcome", "ok")), (2.0, ("outcome", "ok")), (0.05, ("outcome", "error"))],
        # The error attribute set sees nothing in this window.
        [(7.0, ("outcome", "ok")), (0.001, ("outcome", "ok", "provider", "p"))],
        [],
        [(0.2, ("outcome", "error")), (20.0, ())],
    ]
    for window in windows:
        for value, attributes in window:
            pair.record(value, attributes)
        metrics = pair.assert_alike(reader)
        ours = metrics.get("ours")
        points = list(ours.data.data_points) if ours else []
        starts.append({str(p.attributes): p.start_time_unix_nano for p in points})
        times.extend({p.time_unix_nano for p in points})
        assert ours is None or ours.data.aggregation_temporality is temporality

    assert times == sorted(times)
    if temporality is CUMULATIVE:
        # A series keeps the start it had when it first appeared.
        assert starts[1]["{'outcome': 'ok'}"] == starts[0]["{'outcome': 'ok'}"]
        assert starts[3]["{'outcome': 'error'}"] == starts[0]["{'outcome': 'error'}"]
    else:
        # A delta point starts where the reader's previous collection ended.
        assert starts[1]["{'outcome': 'ok'}"] == times[0]
        assert starts[2] == {}
        # The empty third collection's time, which no point carries.
        assert times[1] <= starts[3]["{'outcome': 'error'}"] <= times[2]


def test_cumulative_and_delta_readers_of_one_provider_each_get_their_own(
    provider_pairs: list[Pair],
) -> None:
    cumulative, other_cumulative, delta = (
        reader_for(CUMULATIVE),
        reader_for(CUMULATIVE),
        reader_for(DELTA),
    )
    pair = Pair(cumulative, other_cumulative, delta)
    provider_pairs.append(pair)
    for round_ in range(3):
        pair.record(0.5 + round_, ("outcome", "ok"))
        # Readers collect at different moments, some not every round.
        pair.assert_alike(delta)
        pair.assert_alike(cumulative)
        if round_ != 1:
            pair.assert_alike(other_cumulative)

    ours = pair.collect(cumulative)["ours"].data.data_points
    assert [point.count for point in ours] == [3]  # type: ignore[union-attr]


def test_past_the_cardinality_limit_measurements_go_to_the_overflow_point(
    provider_pairs: list[Pair],
) -> None:
    reader = reader_for(CUMULATIVE)
    pair = Pair(reader)
    provider_pairs.append(pair)
    for number in range(CARDINALITY_LIMIT + 5):
        pair.record(1.0, ("n", str(number)))

    metrics = pair.assert_alike(reader)

    points = list(metrics["ours"].data.data_points)
    assert len(points) == CARDINALITY_LIMIT + 1
    (overflow,) = (p for p in points if p.attributes == {"otel.metric.overflow": True})
    assert overflow.count == 5  # type: ignore[union-attr]


def test_histograms_join_the_scope_of_the_meter_and_need_no_sdk_metric() -> None:
    reader = reader_for(CUMULATIVE)
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    histograms = Histograms(RESOURCE, SCOPE)
    histograms.attach(reader)
    try:
        # Nothing recorded anywhere: nothing collected.
        assert reader.get_metrics_data() is None
        histograms.create("ours", "s", "d", BOUNDS).record(1.0)
        alone = reader.get_metrics_data()
        provider.get_meter("aiproc").create_counter("counter").add(1)
        provider.get_meter("elsewhere").create_counter("other").add(1)
        together = reader.get_metrics_data()
    finally:
        provider.shutdown()

    assert isinstance(alone, MetricsData)
    assert names_by_scope(alone) == {"aiproc": ["ours"]}
    assert alone.resource_metrics[0].resource == RESOURCE
    assert isinstance(together, MetricsData)
    assert names_by_scope(together) == {"aiproc": ["counter", "ours"], "elsewhere": ["other"]}


def names_by_scope(data: MetricsData) -> dict[str, list[str]]:
    (resource,) = data.resource_metrics
    return {
        scope.scope.name: sorted(metric.name for metric in scope.metrics)
        for scope in resource.scope_metrics
    }


def test_a_histogram_created_before_a_reader_is_attached_is_exported_to_it() -> None:
    reader = reader_for(DELTA)
    histograms = Histograms(RESOURCE, SCOPE)
    early = histograms.create("early", "s", "d", BOUNDS)
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    histograms.attach(reader)
    try:
        early.record(0.5)
        data = reader.get_metrics_data()
    finally:
        provider.shutdown()

    assert data is not None
    assert names_by_scope(data) == {"aiproc": ["early"]}


def test_a_reader_no_provider_registered_is_refused() -> None:
    with pytest.raises(RuntimeError, match="no collect callback"):
        Histograms(RESOURCE, SCOPE).attach(InMemoryMetricReader())


def test_recording_from_threads_while_a_reader_collects_loses_nothing() -> None:
    reader = reader_for(DELTA)
    provider = MeterProvider(metric_readers=[reader], resource=RESOURCE)
    histograms = Histograms(RESOURCE, SCOPE)
    histograms.attach(reader)
    histogram = histograms.create("ours", "s", "d", BOUNDS)
    per_thread, threads = 20_000, 4
    counted = 0
    summed = 0.0

    def collect() -> None:
        nonlocal counted, summed
        data = reader.get_metrics_data()
        for point in (
            data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points if data else ()
        ):
            assert isinstance(point, HistogramDataPoint)
            assert point.count == sum(point.bucket_counts)
            counted += point.count
            summed += point.sum

    def record(histogram: Histogram) -> None:
        for _ in range(per_thread):
            histogram.record(1.0, ("k", "v"))

    workers = [threading.Thread(target=record, args=(histogram,)) for _ in range(threads)]
    try:
        for worker in workers:
            worker.start()
        while any(worker.is_alive() for worker in workers):
            collect()
        for worker in workers:
            worker.join()
        collect()
    finally:
        provider.shutdown()

    assert (counted, summed) == (per_thread * threads, float(per_thread * threads))
