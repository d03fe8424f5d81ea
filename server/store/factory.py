"""Opens the store the config names, with the queue, rate limiter and bus that go with it."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

from aiproc.server.config import REDIS_SCHEMES, Config, ServerConfig
from aiproc.server.core.backend import Backend
from aiproc.server.core.replicas import LoneReplica
from aiproc.server.core.work import LocalWorkQueue
from aiproc.server.resilience.clock import Clock
from aiproc.server.resilience.rate_limiter import RateLimiter
from aiproc.server.resilience.rate_share import RateShares
from aiproc.server.store.base import LocalTaskStore
from aiproc.server.store.lock import DataDirLock
from aiproc.server.store.memory import MemoryStore

DATABASE_FILE = "aiproc.db"


async def open_backend(config: Config, owned: AsyncExitStack, clock: Clock) -> Backend:
    """A Redis store shares everything among replicas; any other is this process's alone.
    `owned` closes what is opened here."""
    if config.server.store.startswith(REDIS_SCHEMES):
        from aiproc.server.cluster.backend import open_redis_backend

        return await open_redis_backend(config, owned, clock)
    store = await open_store(config.server, owned)
    processor = config.processor
    return Backend(
        store=store,
        queue=LocalWorkQueue(
            store,
            processor.queue_size,
            config.server.max_crashes,
            config.quotas,
            shares=RateShares(config.quotas, processor.rate_limit_rps, processor.rate_limit_burst),
            clock=clock,
        ),
        limiter=RateLimiter(processor.rate_limit_rps, processor.rate_limit_burst, clock),
        bus=LoneReplica(),
    )


async def open_store(config: ServerConfig, owned: AsyncExitStack) -> LocalTaskStore:
    """A MemoryStore, or the SQLite file `aiproc.db` under data_dir (created if need be),
    with the data_dir locked for this process; `owned` closes both."""
    if config.store == "memory":
        store: LocalTaskStore = MemoryStore(retention=config.result_ttl)
        owned.push_async_callback(store.close)
        return store
    from aiproc.server.store.sqlite import SqliteStore

    folder = Path(config.data_dir)
    try:
        # Once, at start-up: blocking the loop for a mkdir is harmless here.
        folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    except OSError as exc:
        raise OSError(f"cannot create data_dir {folder}: {exc.strerror or exc}") from None
    owned.enter_context(DataDirLock(folder))
    store = await SqliteStore.open(folder / DATABASE_FILE, retention=config.result_ttl)
    owned.push_async_callback(store.close)
    return store
