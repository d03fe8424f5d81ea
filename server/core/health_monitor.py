"""Active health checks: every provider's cheap endpoint, every `check_interval`.

Checks never make paid completion calls (the reference did, every 30 s);
each provider's `check_health` asks something like its model list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiproc.server.config import HealthConfig
from aiproc.server.core.errors import ProviderError
from aiproc.server.core.provider_pool import ProviderSlot
from aiproc.server.resilience.clock import Clock

log = logging.getLogger(__name__)


class HealthMonitor:
    """One loop per enabled provider, feeding check outcomes to its health tracker."""

    def __init__(self, slots: Sequence[ProviderSlot], config: HealthConfig, clock: Clock) -> None:
        self._slots = [slot for slot in slots if slot.config.enabled]
        self._config = config
        self._clock = clock
        self._loops: list[asyncio.Task[None]] = []
        self.checks = 0

    def start(self) -> None:
        self._loops = [
            asyncio.create_task(self._watch(slot), name=f"aiproc-health-{slot.name}")
            for slot in self._slots
        ]

    async def check(self, slot: ProviderSlot) -> bool:
        """Runs one check of `slot` now and records it; True when healthy."""
        try:
            async with asyncio.timeout(self._config.timeout):
                await slot.provider.check_health(self._config.timeout)
            ok = True
        except (ProviderError, TimeoutError) as exc:
            log.info("health check of %s failed: %s", slot.name, exc or "timed out")
            ok = False
        except Exception:
            log.exception("health check of %s raised unexpectedly", slot.name)
            ok = False
        self.checks += 1
        now = self._clock.monotonic()
        slot.record_health(now, ok)
        if slot.breaker is not None:
            slot.breaker.state(now)  # lets an OPEN breaker announce HALF_OPEN on time
        return ok

    async def _watch(self, slot: ProviderSlot) -> None:
        while True:
            await self.check(slot)
            await self._clock.sleep(self._config.check_interval)

    async def stop(self) -> None:
        for loop in self._loops:
            loop.cancel()
        for loop in self._loops:
            with contextlib.suppress(asyncio.CancelledError):
                await loop
        self._loops = []

    def __repr__(self) -> str:
        return f"<HealthMonitor {len(self._slots)} providers, {self.checks} checks>"
