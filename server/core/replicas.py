"""What replicas sharing one store tell each other, and what a lone server does instead.

Results, progress and cancels concern whichever replica a caller is connected
to, which need not be the one running the task. The Redis bus
(`aiproc.server.cluster.bus`) carries them between replicas; `LoneReplica`
is the bus of a server that shares its store with nobody.
"""

from __future__ import annotations

from typing import Protocol

from aiproc.server.core.models import ProgressEvent, TaskResult
from aiproc.server.core.signals import NoSignals, ProviderSignals


class ReplicaListener(Protocol):
    """What this replica does with what another one said."""

    async def remote_result(self, task_id: str, client_id: str) -> None:
        """A task finished on another replica; its result is in the store."""
        ...

    def remote_progress(self, event: ProgressEvent) -> None: ...

    def remote_cancel(self, task_id: str) -> None:
        """Another replica recorded a cancel of a task that may be running here."""
        ...

    def remote_paused(self, provider: str, seconds: float) -> None: ...

    def remote_breaker(self, provider: str, opened: bool) -> None: ...

    def resync(self) -> None:
        """Messages may have been missed (the bus reconnected): re-read what matters."""
        ...


class ReplicaBus(ProviderSignals, Protocol):
    """Tells the other replicas; never blocks the caller."""

    async def start(self, listener: ReplicaListener) -> None: ...

    def result_ready(self, result: TaskResult) -> None: ...

    def progress(self, event: ProgressEvent) -> None: ...

    def cancel(self, task_id: str) -> None: ...

    async def stop(self) -> None: ...


class LoneReplica(NoSignals):
    """The bus of a server with a store of its own: there is nobody to tell."""

    async def start(self, listener: ReplicaListener) -> None:
        pass

    def result_ready(self, result: TaskResult) -> None:
        pass

    def progress(self, event: ProgressEvent) -> None:
        pass

    def cancel(self, task_id: str) -> None:
        pass

    async def stop(self) -> None:
        pass
