"""Opens the store the config names."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

from aiproc.server.config import ServerConfig
from aiproc.server.store.base import TaskStore
from aiproc.server.store.lock import DataDirLock
from aiproc.server.store.memory import MemoryStore

DATABASE_FILE = "aiproc.db"


async def open_store(config: ServerConfig, owned: AsyncExitStack) -> TaskStore:
    """A MemoryStore, or the SQLite file `aiproc.db` under data_dir (created if need be),
    with the data_dir locked for this process; `owned` closes both."""
    if config.store == "memory":
        store: TaskStore = MemoryStore(retention=config.result_ttl)
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
