"""Providers that make a server fail over deterministically, and a spy on its event watchers."""

from __future__ import annotations

import threading

import pytest

from aiproc.server.app import AiprocServer
from aiproc.server.core.errors import TransientError
from aiproc.server.core.events import EventWatch
from aiproc.server.core.models import TokenUsage
from aiproc.server.providers.base import Completion, CompletionRequest
from tests.support import make_config

FAILOVER_CONFIG = make_config(
    processor={"rate_limit_rps": 10_000.0, "rate_limit_burst": 100},
    failover={"retry_delay": 0.01},
    health={"enabled": False},
)
"""Fast failovers, and no health checks whose timing could add events."""


class FailingProvider:
    """A provider whose every call fails with a retryable error."""

    kind = "test"
    model = "failing-model"
    context_window = 8192

    def __init__(self, name: str = "primary") -> None:
        self.name = name
        self.calls = 0

    async def complete(self, request: CompletionRequest) -> Completion:
        self.calls += 1
        raise TransientError(f"500 from {self.name}", provider=self.name)

    async def check_health(self, timeout: float) -> None:  # noqa: ASYNC109 - the protocol's
        return None

    async def aclose(self) -> None:
        return None


class SteadyProvider:
    """A provider whose every call succeeds at once."""

    kind = "test"
    model = "steady-model"
    context_window = 8192

    def __init__(self, name: str = "secondary") -> None:
        self.name = name

    async def complete(self, request: CompletionRequest) -> Completion:
        return Completion(f"answered by {self.name}", self.model, TokenUsage(3, 2), "stop")

    async def check_health(self, timeout: float) -> None:  # noqa: ASYNC109 - the protocol's
        return None

    async def aclose(self) -> None:
        return None


class WatchSpy:
    """Tells when the server starts and stops watching events for a WatchEvents call.

    Events are live only, so a test must know the server is watching before it
    causes one. Thread events, so that tests with the server on another loop can wait.
    """

    def __init__(self, server: AiprocServer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.started = threading.Event()
        self.stopped = threading.Event()
        bus = server.processor.events
        watch, unwatch = bus.watch, bus.unwatch

        def spy_watch() -> EventWatch:
            opened = watch()
            self.started.set()
            return opened

        def spy_unwatch(opened: EventWatch) -> None:
            unwatch(opened)
            self.stopped.set()

        monkeypatch.setattr(bus, "watch", spy_watch)
        monkeypatch.setattr(bus, "unwatch", spy_unwatch)
