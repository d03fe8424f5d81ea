"""LocalWorkQueue with [quotas] rate shares, on a fake clock: a throttled tenant's tasks wait
without holding a worker, and workers take other tenants' tasks meanwhile."""

from __future__ import annotations

import asyncio

from aiproc.server.config import QuotasConfig, TenantQuota
from aiproc.server.core.work import LocalWorkQueue
from aiproc.server.resilience.clock import FakeClock
from aiproc.server.resilience.rate_share import RateShares
from aiproc.server.store.memory import MemoryStore
from tests.store.builders import task

PATIENCE = 5.0
"""Seconds a test waits for what needs only a few turns of the event loop."""


async def test_workers_pass_over_a_throttled_tenant_and_come_back_at_its_time() -> None:
    clock = FakeClock()
    # a: 0.25 of 8 tasks a second, burst max(1, 0.25 * 1) = 1; everyone else: no cap.
    quotas = QuotasConfig(tenants=(TenantQuota("a", rate_share=0.25),))
    queue = LocalWorkQueue(
        MemoryStore(retention=60.0),
        capacity=200,
        max_crashes=3,
        quotas=quotas,
        shares=RateShares(quotas, rate=8.0, burst=1),
        clock=clock,
    )
    for n in range(1, 101):
        await queue.admit(task(f"a-{n:03}", "a"))
    for n in range(1, 11):
        await queue.admit(task(f"b-{n:02}", "b"))

    # Eleven workers asking at once, with no time passing: a's one start, then b's ten.
    taken = [await asyncio.wait_for(queue.get(), PATIENCE) for _ in range(11)]
    assert taken[0] == "a-001"
    assert taken[1:] == [f"b-{n:02}" for n in range(1, 11)]

    waiting = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    assert await queue.waiting_of("a") == 99
    clock.advance(0.5)
    assert await asyncio.wait_for(waiting, PATIENCE) == "a-002"
    queue.close()
