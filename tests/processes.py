"""Real processes for end-to-end tests: `aiproc serve` and `aiproc fake-provider`."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

AIPROC = (sys.executable, "-m", "aiproc.server.cli.main")


@contextlib.asynccontextmanager
async def served(config: Path, data_dir: Path, log: Path) -> AsyncIterator[tuple[int, str]]:
    """A real `aiproc serve` process; yields its pid and address; killed at the end."""
    with log.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            *AIPROC, "serve", "--listen", "127.0.0.1:0", "--config", str(config),
            "--data-dir", str(data_dir),
            stdout=asyncio.subprocess.PIPE, stderr=log_file,
        )  # fmt: skip
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        match = re.search(r"serving on (\S+)", line)
        assert match, f"no address in {line!r}; see {log}"
        yield process.pid, match.group(1)
    finally:
        if process.returncode is None:
            process.kill()
        await process.wait()


@contextlib.asynccontextmanager
async def fake_provider_process() -> AsyncIterator[str]:
    """`aiproc fake-provider` in its own process, so its clock reads arrivals without
    waiting on this process's event loop; yields its base URL."""
    process = await asyncio.create_subprocess_exec(
        *AIPROC, "fake-provider", "--port", "0", "--record", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(20):
            line = (await process.stdout.readline()).decode()
        match = re.search(r"(http://\S+/v1)", line)
        assert match, f"unexpected announcement: {line!r}"
        yield match.group(1)
    finally:
        process.terminate()
        await process.wait()


async def provider_arrivals(base_url: str) -> list[float]:
    """When each chat completion reached a `fake_provider_process`, sorted."""
    control = base_url.removesuffix("/v1") + "/_fake/requests"
    async with httpx.AsyncClient() as client:
        listed = (await client.get(control)).json()["requests"]
    return sorted(r["arrived_at"] for r in listed if r["path"].endswith("/chat/completions"))
