"""Counters and latency summaries the Stats RPC reports."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from aiproc.server.core.models import Priority
from aiproc.server.core.provider_pool import ProviderSnapshot


@dataclass(slots=True)
class Counters:
    """Totals since start."""

    queued: int = 0
    completed: int = 0
    failed: int = 0
    retried: int = 0
    rejected: int = 0
    cancelled: int = 0
    timed_out: int = 0
    failovers: int = 0
    rate_limit_waits: int = 0


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Percentiles in seconds over the most recent samples."""

    samples: int = 0
    p50: float = 0.0
    p90: float = 0.0
    p99: float = 0.0
    max: float = 0.0


class LatencyWindow:
    """The last `size` durations; percentiles by nearest rank."""

    def __init__(self, size: int = 2048) -> None:
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, seconds: float) -> None:
        self._samples.append(seconds)

    def summary(self) -> LatencySummary:
        if not self._samples:
            return LatencySummary()
        ordered = sorted(self._samples)

        def rank(q: float) -> float:
            return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

        return LatencySummary(len(ordered), rank(0.5), rank(0.9), rank(0.99), ordered[-1])


@dataclass(frozen=True, slots=True)
class ProcessorStats:
    """A snapshot for the Stats RPC."""

    queue_size: int
    queue_capacity: int
    queue_depths: dict[Priority, int]
    active_workers: int
    total_workers: int
    is_running: bool
    counters: Counters
    queue_latency: LatencySummary
    processing_latency: LatencySummary
    providers: list[ProviderSnapshot]
    event_counts: dict[str, int]
    """Provider events since start, by EventKind value."""
    subscribers: int
    undelivered_results: int
    started_at: float
