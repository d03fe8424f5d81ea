"""A load generator in a process of its own, driven over stdin and stdout.

    python bench/load_process.py aiproc ADDRESS          # QueueTask + StreamResults
    python bench/load_process.py direct ADDRESS CONNS    # the same calls straight to a provider
    python bench/load_process.py litellm BASE_URL        # through LiteLLM's Router, in here

It prints "ready" and a JSON object (the resident memory its load's set-up
added, in bytes) once connected, then for each line "closed ITEMS CONCURRENCY"
on stdin runs that closed loop and prints one JSON line: the latencies (s), the
failures, the seconds, the CPU seconds this process spent, and its resident
memory. It ends at EOF.

Each load in its own process, as each runs for real: a caller of aiproc does
not carry LiteLLM's heap, whose full garbage collections took up to a quarter
of a second each when the loads shared the suite's process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from _load import AiprocLoad, DirectLoad, Load
from _procs import rss_bytes

READY = "ready"
HERE = Path(__file__).resolve()
REPORT_LIMIT = 1 << 24
"""Bytes one report line may take (3,000 latencies take about 60 KB)."""


class LoadProcess:
    """The suite's end: a load process started with `argv`, running closed loops on request."""

    def __init__(self, process: asyncio.subprocess.Process, setup_rss: int) -> None:
        self._process = process
        self.setup_rss = setup_rss
        """Bytes of resident memory the load's set-up added (importing LiteLLM, say)."""
        self.rss = 0
        """Bytes resident in the process after its last round."""

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, *argv: str) -> AsyncIterator[LoadProcess]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE),
            *argv,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=REPORT_LIMIT,
        )
        assert process.stdin is not None
        assert process.stdout is not None
        try:
            # Importing LiteLLM takes seconds, more on a busy machine.
            async with asyncio.timeout(120):
                line = (await process.stdout.readline()).decode().strip()
            word, _, info = line.partition(" ")
            if word != READY:
                raise RuntimeError(f"the load process did not start: {line!r}")
            yield cls(process, int(json.loads(info)["setup_rss"]))
        finally:
            process.stdin.close()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()

    async def closed(self, items: int, concurrency: int) -> tuple[Load, float]:
        """A closed loop in the process: what it did, and the CPU seconds it spent."""
        assert self._process.stdin is not None
        assert self._process.stdout is not None
        self._process.stdin.write(f"closed {items} {concurrency}\n".encode())
        await self._process.stdin.drain()
        line = await self._process.stdout.readline()
        if not line:
            raise RuntimeError("the load process ended without a report")
        report = json.loads(line)
        self.rss = int(report["rss"])
        load = Load(report["latencies"], report["failed"], report["seconds"])
        return load, float(report["cpu_seconds"])


def connect(argv: list[str]) -> AbstractAsyncContextManager[Any]:
    kind, address = argv[0], argv[1]
    if kind == "aiproc":
        return AiprocLoad.connect(address)
    if kind == "direct":
        return DirectLoad.connect(address, int(argv[2]))
    if kind == "litellm":
        from _router import RouterLoad

        return RouterLoad.connect(address)
    raise SystemExit(f"unknown load {kind!r}: aiproc, direct or litellm")


async def serve(argv: list[str]) -> None:
    loop = asyncio.get_running_loop()
    before = rss_bytes(os.getpid())
    async with connect(argv) as load:
        print(READY, json.dumps({"setup_rss": rss_bytes(os.getpid()) - before}), flush=True)
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command, items, concurrency = line.split()
            if command != "closed":
                raise SystemExit(f"unknown command {command!r}")
            began = time.process_time()
            done = await load.closed(int(items), int(concurrency))
            report = {
                "latencies": done.latencies,
                "failed": done.failed,
                "seconds": done.seconds,
                "cpu_seconds": time.process_time() - began,
                "rss": rss_bytes(os.getpid()),
            }
            print(json.dumps(report), flush=True)


def main() -> int:
    asyncio.run(serve(sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
