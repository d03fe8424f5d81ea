"""The parts of a processor that depend on where tasks live: one process's, or shared."""

from __future__ import annotations

from dataclasses import dataclass

from aiproc.server.core.replicas import ReplicaBus
from aiproc.server.core.work import WorkQueue
from aiproc.server.resilience.rate_limiter import Limiter
from aiproc.server.store.base import TaskStore


@dataclass(frozen=True, slots=True)
class Backend:
    store: TaskStore
    queue: WorkQueue
    limiter: Limiter
    """The global rate limit: this process's own, or one every replica shares."""
    bus: ReplicaBus
