"""Opens the store the config names."""

from __future__ import annotations

from pathlib import Path

from aiproc.server.config import ServerConfig
from aiproc.server.store.base import TaskStore
from aiproc.server.store.memory import MemoryStore

DATABASE_FILE = "aiproc.db"


async def open_store(config: ServerConfig) -> TaskStore:
    """A MemoryStore, or the SQLite file `aiproc.db` under data_dir (created if need be)."""
    if config.store == "memory":
        return MemoryStore(retention=config.result_ttl)
    from aiproc.server.store.sqlite import SqliteStore

    folder = Path(config.data_dir)
    try:
        # Once, at start-up: blocking the loop for a mkdir is harmless here.
        folder.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240
    except OSError as exc:
        raise OSError(f"cannot create data_dir {folder}: {exc.strerror or exc}") from None
    return await SqliteStore.open(folder / DATABASE_FILE, retention=config.result_ttl)
