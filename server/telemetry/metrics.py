"""The service's metrics: tasks, queue, provider calls, tokens, retries, rate limits, breakers.

Our own instruments are named `aiproc.*`; provider calls are also recorded
in the OpenTelemetry GenAI semantic conventions (`gen_ai.client.*`), so
GenAI dashboards work unchanged. With a no-op meter (telemetry off) every
method builds a tuple or two, keeps its totals, and records on nothing.

Nothing here calls the SDK per measurement, where a synchronous instrument
costs 8-15 µs and a task makes nine measurements:
- the counters are observable counters over running totals kept here (a dict
  update); they export the same monotonic sums, and readers turn cumulative
  totals into deltas when asked;
- the histograms are aggregated here too (histograms.py), given a `Histograms`
  set; without one (exemplars asked for, or tests on a bare meter) they are
  the meter's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Protocol

from opentelemetry.metrics import CallbackOptions, Histogram, Meter, NoOpMeter, Observation

from aiproc.server.telemetry import genai
from aiproc.server.telemetry.histograms import Attributes, Histograms, attributes_of

__all__ = ["BREAKER_STATES", "Metrics"]

BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
"""The value `aiproc.provider.breaker_state` reports for each breaker state."""

# Seconds: from a queue that is empty (milliseconds) to one that is backed up (minutes).
_WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# The GenAI conventions' advice for gen_ai.client.operation.duration (10 ms
# doubling up to 82 s), which suits whole tasks as well, and for
# gen_ai.client.token.usage (powers of 4 up to 4^13).
_DURATION_BUCKETS = tuple(round(0.01 * 2**i, 2) for i in range(14))
_TOKEN_BUCKETS = tuple(4**i for i in range(14))


class Metrics:
    """Records the service's measurements on `meter`; the gauges read the two callbacks.

    `queue_depths` returns tasks waiting per priority name and
    `breaker_states` a value of BREAKER_STATES per provider name. Both are
    called on the exporter's thread (periodic export, Prometheus scrape), so
    they must only read, and return a snapshot. `histograms`, when given,
    aggregates the histograms (it must belong to `meter`'s provider).
    """

    def __init__(
        self,
        meter: Meter,
        queue_depths: Callable[[], Mapping[str, int]],
        breaker_states: Callable[[], Mapping[str, int]],
        histograms: Histograms | None = None,
    ) -> None:
        histogram = histograms.create if histograms is not None else _on_meter(meter)
        self._tasks = _Totals(meter, "aiproc.tasks", "{task}", "Tasks finished, by outcome.")
        self._queue_wait = histogram(
            "aiproc.task.queue_wait",
            "s",
            "Time a task waited in the queue before a worker took it.",
            _WAIT_BUCKETS,
        )
        self._processing = histogram(
            "aiproc.task.processing",
            "s",
            "Time from a worker taking a task to its outcome, retries included.",
            _DURATION_BUCKETS,
        )
        self._provider_duration = histogram(
            "aiproc.provider.duration",
            "s",
            "Duration of one call to a provider.",
            _DURATION_BUCKETS,
        )
        self._provider_tokens = _Totals(
            meter,
            "aiproc.provider.tokens",
            "{token}",
            "Tokens sent to and received from providers, as they report them.",
        )
        self._genai_duration = histogram(
            "gen_ai.client.operation.duration", "s", "GenAI operation duration.", _DURATION_BUCKETS
        )
        self._genai_tokens = histogram(
            "gen_ai.client.token.usage",
            "{token}",
            "Number of input and output tokens used.",
            _TOKEN_BUCKETS,
        )
        self._retries = _Totals(
            meter, "aiproc.retries", "{retry}", "Task attempts retried after an error."
        )
        self._rate_limit_waits = _Totals(
            meter,
            "aiproc.rate_limit.waits",
            "{wait}",
            "Provider calls that had to wait for the rate limiter.",
        )
        meter.create_observable_gauge(
            "aiproc.queue.depth",
            callbacks=[_observe(queue_depths, "priority")],
            unit="{task}",
            description="Tasks waiting in the queue, by priority.",
        )
        meter.create_observable_gauge(
            "aiproc.provider.breaker_state",
            callbacks=[_observe(breaker_states, "provider")],
            description="Circuit breaker state per provider: 0 closed, 1 half-open, 2 open.",
        )

    def task_finished(
        self,
        outcome: str,
        error_code: str | None,
        queue_wait: float | None,
        processing: float | None,
    ) -> None:
        """Counts a task that ended `outcome` (succeeded, failed or cancelled) and its durations.

        `error_code` names why a failed task failed; a duration is None when
        the task never got there (cancelled while queued, say).
        """
        self._tasks.add(1, ("outcome", outcome, genai.ERROR_TYPE, error_code))
        if queue_wait is not None:
            self._queue_wait.record(queue_wait)
        if processing is not None:
            self._processing.record(processing, ("outcome", outcome))

    def provider_call(
        self,
        provider: str,
        kind: str,
        model: str,
        duration: float,
        outcome: str,
        input_tokens: int | None,
        output_tokens: int | None,
        error_type: str | None,
    ) -> None:
        """Records one call to `provider` (of `kind`, e.g. openai) and the tokens it reported.

        Token counts are None when the provider reported none; `error_type`
        names the error class when the call failed.
        """
        self._provider_duration.record(duration, ("provider", provider, "outcome", outcome))
        call = (
            genai.OPERATION_NAME,
            genai.OPERATION,
            genai.PROVIDER_NAME,
            genai.provider_name(kind),
            genai.REQUEST_MODEL,
            model,
        )
        self._genai_duration.record(duration, (*call, genai.ERROR_TYPE, error_type))
        for direction, tokens in (("input", input_tokens), ("output", output_tokens)):
            if tokens is not None:
                self._provider_tokens.add(tokens, ("provider", provider, "direction", direction))
                self._genai_tokens.record(tokens, (*call, "gen_ai.token.type", direction))

    def retried(self) -> None:
        """Counts one retry of a task attempt."""
        self._retries.add(1, ())

    def rate_limit_waited(self) -> None:
        """Counts one provider call held back by the rate limiter."""
        self._rate_limit_waits.add(1, ())


class _Recorder(Protocol):
    def record(self, value: float, attributes: Attributes = ()) -> None: ...


_Create = Callable[[str, str, str, Sequence[float]], _Recorder]


def _on_meter(meter: Meter) -> _Create:
    """Histograms created on `meter` itself; ones that skip even the attributes on a no-op meter."""
    if isinstance(meter, NoOpMeter):
        return lambda name, unit, description, boundaries: _Discarded()

    def create(name: str, unit: str, description: str, boundaries: Sequence[float]) -> _Recorder:
        return _MeterHistogram(
            meter.create_histogram(
                name,
                unit=unit,
                description=description,
                explicit_bucket_boundaries_advisory=boundaries,
            )
        )

    return create


class _MeterHistogram:
    def __init__(self, instrument: Histogram) -> None:
        self._instrument = instrument

    def record(self, value: float, attributes: Attributes = ()) -> None:
        self._instrument.record(value, attributes_of(attributes))


class _Discarded:
    def record(self, value: float, attributes: Attributes = ()) -> None:
        """Telemetry is off: nothing to record."""


class _Totals:
    """A monotonic counter kept as running totals, exported by an observable counter."""

    def __init__(self, meter: Meter, name: str, unit: str, description: str) -> None:
        # Keyed by attributes flattened to (key, value, key, value...); a None value
        # leaves its key out. Written on the event loop, read on the exporter's thread.
        self._totals: dict[Attributes, int] = {}
        meter.create_observable_counter(
            name, callbacks=[self._observe], unit=unit, description=description
        )

    def add(self, amount: int, attributes: Attributes) -> None:
        totals = self._totals
        totals[attributes] = totals.get(attributes, 0) + amount

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        # A copy first: the loop may add a key while this runs on another thread
        # (copying a dict is one step under the GIL; iterating it is not).
        return [
            Observation(total, attributes_of(key)) for key, total in self._totals.copy().items()
        ]


def _observe(
    read: Callable[[], Mapping[str, int]], key: str
) -> Callable[[CallbackOptions], Iterable[Observation]]:
    def callback(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(value, {key: name}) for name, value in read().items()]

    return callback
