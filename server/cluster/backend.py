"""Assembles the shared backend: Redis store, shared queue, global rate limit, replica bus."""

from __future__ import annotations

from contextlib import AsyncExitStack

from aiproc.server.cluster.bus import RedisBus
from aiproc.server.cluster.rate_limiter import RedisRateLimiter
from aiproc.server.cluster.store import RedisStore
from aiproc.server.cluster.work_queue import RedisWorkQueue
from aiproc.server.config import Config
from aiproc.server.core.backend import Backend
from aiproc.server.resilience.clock import Clock
from aiproc.server.resilience.rate_share import RateShares


async def open_redis_backend(config: Config, owned: AsyncExitStack, clock: Clock) -> Backend:
    """Everything shared through the Redis at config.server.store; `owned` closes it."""
    server = config.server
    store = await RedisStore.open(
        server.store, prefix=server.redis_prefix, retention=server.result_ttl
    )
    owned.push_async_callback(store.close)
    processor = config.processor
    queue = RedisWorkQueue(
        store,
        processor.queue_size,
        max_crashes=server.max_crashes,
        lease_ttl=server.lease_ttl,
        idempotency_window=server.idempotency_window,
        quotas=config.quotas,
        shares=RateShares(config.quotas, processor.rate_limit_rps, processor.rate_limit_burst),
        clock=clock,
    )
    return Backend(
        store=store,
        queue=queue,
        limiter=RedisRateLimiter.for_prefix(
            store.client,
            server.redis_prefix,
            rate=processor.rate_limit_rps,
            burst=processor.rate_limit_burst,
            clock=clock,
        ),
        bus=RedisBus(store.client, store.keys, origin=store.origin, on_wake=queue.wake),
    )
