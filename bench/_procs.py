"""Real processes for the benchmarks: `aiproc serve`, `aiproc fake-provider`, and what they cost.

The server under test runs in its own process so that its CPU time and memory
can be read apart from the load generator's (from /proc, Linux only).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path

AIPROC = (sys.executable, "-m", "aiproc.server.cli.main")
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Running:
    pid: int
    address: str
    """host:port of a server; the /v1 base URL of a fake provider."""

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def rss_bytes(self) -> int:
        return rss_bytes(self.pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far, every thread included."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    """Resident memory of a process now."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


@contextlib.asynccontextmanager
async def _announced(
    argv: Sequence[str], pattern: str, log: Path, env: dict[str, str] | None = None
) -> AsyncIterator[Running]:
    """Starts `argv`, waits for the stdout line matching `pattern`, and ends it afterwards."""
    with log.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=log_file, env=env
        )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode()
        match = re.search(pattern, line)
        if match is None:
            raise RuntimeError(f"{argv[3]} did not start ({line!r}); see {log}")
        yield Running(process.pid, match.group(1))
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(15):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


def fake_provider(
    folder: Path,
    *,
    latency: float = 0.0,
    record: bool = False,
    name: str = "fake",
    extra: Sequence[str] = (),
) -> contextlib.AbstractAsyncContextManager[Running]:
    """`aiproc fake-provider` on a free port (with `extra` flags); its address is the /v1
    base URL."""
    argv = [*AIPROC, "fake-provider", "--port", "0", "--latency", str(latency), *extra]
    if record:
        argv.append("--record")
    return _announced(argv, r"(http://\S+/v1)", folder / f"{name}.log")


def server(
    folder: Path, config: str, *, env: dict[str, str] | None = None, name: str = "aiproc"
) -> contextlib.AbstractAsyncContextManager[Running]:
    """`aiproc serve` with this TOML config, on a free port, with a data_dir in `folder`."""
    path = folder / f"{name}.toml"
    path.write_text(config, encoding="utf-8")
    argv = [
        *AIPROC, "serve", "--config", str(path), "--listen", "127.0.0.1:0",
        "--data-dir", str(folder / f"{name}-data"),
    ]  # fmt: skip
    # The calling shell's OTEL_* must not switch tracing on unless asked.
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return _announced(argv, r"serving on (\S+)", folder / f"{name}.log", {**base, **(env or {})})
