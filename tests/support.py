"""Helpers shared by the tests: configs, a provider the test controls, a locked store file."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from aiproc.server.config import Config, load_config
from aiproc.server.core.models import TokenUsage
from aiproc.server.providers.base import Completion, CompletionRequest

ServerFactory = Callable[..., Any]


def make_config(**sections: Mapping[str, object]) -> Config:
    """A config from defaults plus overrides, listening on a free port."""
    overrides: dict[str, dict[str, object]] = {
        "server": {"listen": "127.0.0.1:0", "store": "memory"}
    }
    for name, values in sections.items():
        overrides.setdefault(name, {}).update(values)
    return load_config(env={}, overrides=overrides)


class GatedProvider:
    """A provider whose calls wait for the test to open a gate; records the order of calls."""

    kind = "test"
    model = "gated-model"
    context_window = 8192

    def __init__(self, name: str = "gated") -> None:
        self.name = name
        self.gate = asyncio.Event()
        self.calls: list[str] = []
        self.started = asyncio.Condition()

    async def complete(self, request: CompletionRequest) -> Completion:
        url_line = request.messages[-1].content.splitlines()[0]
        async with self.started:
            self.calls.append(url_line.removeprefix("URL: "))
            self.started.notify_all()
        await self.gate.wait()
        return Completion("done: " + url_line, self.model, TokenUsage(3, 2), "stop")

    async def check_health(self, timeout: float) -> None:  # noqa: ASYNC109
        return None

    async def wait_calls(self, n: int, within: float = 5.0) -> None:
        async with asyncio.timeout(within), self.started:
            await self.started.wait_for(lambda: len(self.calls) >= n)

    async def aclose(self) -> None:
        return None


@contextlib.contextmanager
def sqlite_write_locked(path: Path) -> Iterator[None]:
    """Another connection's write transaction on the SQLite file at `path`: the store's
    commits wait for its end (up to the store's 5 s busy timeout; each test ends it well
    within that)."""
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield
    finally:
        other.close()  # rolls the transaction back


def refuse_task_inserts(path: Path) -> None:
    """Makes every later commit that inserts a task into the SQLite file at `path` fail,
    through a trigger named `refuse` (DROP TRIGGER refuse undoes it)."""
    with contextlib.closing(sqlite3.connect(path)) as other:
        other.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON tasks BEGIN SELECT RAISE(ABORT, 'no'); END"
        )
