"""Provider events (failovers, breaker and health changes) for watchers and for Stats.

Events are informational and live-only: a watcher whose bounded buffer is
full loses the oldest events rather than slowing the workers, and the loss is
counted.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass

from opentelemetry import trace

DEFAULT_BUFFER = 1024


class EventKind(enum.Enum):
    FAILOVER = "failover"
    BREAKER_OPENED = "breaker_opened"
    BREAKER_HALF_OPEN = "breaker_half_open"
    RECOVERED = "recovered"
    FAILBACK = "failback"
    HEALTH_CHANGED = "health_changed"
    PAUSED = "paused"
    ALL_PROVIDERS_DOWN = "all_providers_down"


@dataclass(frozen=True, slots=True)
class ProviderEvent:
    kind: EventKind
    at: float
    """Wall-clock seconds since the epoch."""
    provider: str = ""
    to_provider: str = ""
    reason: str = ""
    downtime: float = 0.0
    """Seconds, for RECOVERED."""
    health: str = ""
    """The new health level's name, for HEALTH_CHANGED."""
    task_id: str = ""


class EventWatch:
    """One watcher's bounded view of the event stream."""

    def __init__(self, buffer: int) -> None:
        self._queue: asyncio.Queue[ProviderEvent | None] = asyncio.Queue(maxsize=buffer)
        self.dropped = 0

    def offer(self, event: ProviderEvent) -> None:
        if self._queue.full():
            self._queue.get_nowait()  # the oldest goes: watchers want what is happening now
            self.dropped += 1
        self._queue.put_nowait(event)

    def close(self) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(None)

    async def __aiter__(self) -> AsyncIterator[ProviderEvent]:
        while (event := await self._queue.get()) is not None:
            yield event


class EventBus:
    """Counts every event and hands it to each watcher."""

    def __init__(self, buffer: int = DEFAULT_BUFFER) -> None:
        self._buffer = buffer
        self._watches: set[EventWatch] = set()
        self.counts: Counter[EventKind] = Counter()

    def publish(self, event: ProviderEvent) -> None:
        """Counts the event, hands it to every watcher, and notes it on the current span
        (a breaker trip or failover then shows in the trace of the task that caused it)."""
        self.counts[event.kind] += 1
        for watch in self._watches:
            watch.offer(event)
        span = trace.get_current_span()
        if span.is_recording():
            attributes = {"aiproc.provider": event.provider, "aiproc.reason": event.reason}
            if event.to_provider:
                attributes["aiproc.to_provider"] = event.to_provider
            if event.health:
                attributes["aiproc.health"] = event.health
            span.add_event(f"aiproc.{event.kind.value}", attributes)

    def watch(self) -> EventWatch:
        watch = EventWatch(self._buffer)
        self._watches.add(watch)
        return watch

    def unwatch(self, watch: EventWatch) -> None:
        self._watches.discard(watch)

    def close(self) -> None:
        for watch in self._watches:
            watch.close()

    def __repr__(self) -> str:
        return f"<EventBus watchers={len(self._watches)} events={sum(self.counts.values())}>"
