"""What the SQLite store costs: the same workload with store "memory" and "sqlite", in one process.

    .venv/bin/python bench/store_throughput.py            # 3 x (memory, sqlite), 2,000 tasks each
    .venv/bin/python bench/store_throughput.py --quick    # 2 x (memory, sqlite), 400 tasks each

Each round starts an in-process aiproc server (AiprocServer.start) in front of
a fake OpenAI-compatible provider answering at once, and queues N tasks through
the Python client, `--concurrency` of them in flight at a time, from the first
QueueTask to the last result (each result acknowledged). Telemetry is off and
the rate limit out of reach. "sqlite" rounds get a fresh data_dir in a new
temporary directory (under --data-root if given), removed after the round, so
every round starts from an empty file. Rounds alternate memory, sqlite, memory,
sqlite... after one untimed warm-up with each store; the medians are compared.
CPU time is the whole process's, every thread included (the store's writer
thread, but also the client and the fake provider, which run in it too).
Prints one table and writes bench/results/store.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _harness

from aiproc.server.app import AiprocServer
from aiproc.server.fakes.openai_server import FakeOpenAIServer
from aiproc.server.store.sqlite import SqliteStore

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "store.json"
STORES = ("memory", "sqlite")
GOAL = 0.8
"""The sqlite/memory throughput ratio aimed for."""


@dataclass(frozen=True, slots=True)
class Round:
    number: int
    store: str
    """memory or sqlite."""
    tasks: int
    failed: int
    seconds: float
    cpu_seconds: float
    commits: int | None
    """SQLite transactions committed during the timed part; None for memory."""
    file_bytes: int | None
    """Size of data_dir's files once the server stopped; None for memory."""

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.seconds

    @property
    def cpu_ms_per_task(self) -> float:
        return 1000 * self.cpu_seconds / self.tasks

    @property
    def commits_per_task(self) -> float | None:
        return None if self.commits is None else self.commits / self.tasks


def store_commits(server: AiprocServer) -> int:
    store = server.processor.store
    return store.commits if isinstance(store, SqliteStore) else 0


def folder_bytes(folder: str) -> int:
    return sum(file.stat().st_size for file in Path(folder).iterdir())


async def run_round(
    number: int,
    store: str,
    fake: FakeOpenAIServer,
    tasks: int,
    concurrency: int,
    data_root: Path | None,
) -> Round:
    with tempfile.TemporaryDirectory(prefix="aiproc-store-bench-", dir=data_root) as folder:
        config = _harness.bench_config(
            fake,
            concurrency,
            server={"store": store, "data_dir": folder},
            telemetry={"enabled": False},
        )
        sqlite = store == "sqlite"
        timing = await _harness.run_round(
            config, tasks, concurrency, count=store_commits if sqlite else None
        )
        file_bytes = await asyncio.to_thread(folder_bytes, folder) if sqlite else None
    return Round(
        number=number,
        store=store,
        tasks=tasks,
        failed=timing.failed,
        seconds=timing.seconds,
        cpu_seconds=timing.cpu_seconds,
        commits=timing.counted,
        file_bytes=file_bytes,
    )


def median(rounds: list[Round], store: str, key: str) -> float:
    return statistics.median(float(getattr(r, key)) for r in rounds if r.store == store)


def report(
    rounds: list[Round],
    tasks: int,
    concurrency: int,
    warmup: int,
    data_root: Path | None,
    load_before: float,
) -> dict[str, Any]:
    memory = median(rounds, "memory", "tasks_per_s")
    sqlite = median(rounds, "sqlite", "tasks_per_s")
    cpu_memory = median(rounds, "memory", "cpu_ms_per_task")
    cpu_sqlite = median(rounds, "sqlite", "cpu_ms_per_task")
    commits = median(rounds, "sqlite", "commits_per_task")
    print(
        f"\nstore throughput: {tasks} tasks a round, {concurrency} in flight, "
        f"fake provider at 0 ms, telemetry off, {warmup}-task warm-up of each store not counted"
    )
    print(f"{'round':>5}  {'store':<6}  {'tasks/s':>9}  {'cpu ms/task':>11}  {'commits/task':>12}")
    for r in rounds:
        per_task = "-" if r.commits_per_task is None else f"{r.commits_per_task:.3f}"
        failed = f"  ({r.failed} failed)" if r.failed else ""
        print(
            f"{r.number:>5}  {r.store:<6}  {r.tasks_per_s:>9.1f}  "
            f"{r.cpu_ms_per_task:>11.3f}  {per_task:>12}{failed}"
        )
    ratio = sqlite / memory
    met = ratio >= GOAL
    print(
        f"median  memory {memory:.1f} tasks/s, sqlite {sqlite:.1f} tasks/s: "
        f"sqlite/memory = {ratio:.3f} (goal >= {GOAL}: {'met' if met else 'NOT met'}); "
        f"cpu {cpu_memory:.3f} -> {cpu_sqlite:.3f} ms/task"
    )
    # Each sqlite round against the memory round just before it: less exposed to the
    # machine's drift than the medians are, and the spread shows the noise.
    pairs = [b.tasks_per_s / a.tasks_per_s for a, b in zip(rounds[::2], rounds[1::2], strict=True)]
    print(f"per pair sqlite/memory: {', '.join(f'{x:.3f}' for x in pairs)}")
    print(f"sqlite commits per task: {commits:.3f}")
    failures = sum(r.failed for r in rounds)
    if failures:
        print(f"warning: {failures} tasks failed", file=sys.stderr)
    return {
        **_harness.environment(),
        "tasks_per_round": tasks,
        "concurrency": concurrency,
        "warmup_tasks": warmup,
        "provider_latency_ms": 0,
        "telemetry": "off",
        "data_root": str(data_root or tempfile.gettempdir()),
        "tasks_per_s": {"memory": round(memory, 1), "sqlite": round(sqlite, 1)},
        "ratio_sqlite_memory": round(ratio, 4),
        "pair_ratios": [round(x, 4) for x in pairs],
        "goal_ratio": GOAL,
        "goal_met": met,
        "cpu_ms_per_task": {"memory": round(cpu_memory, 4), "sqlite": round(cpu_sqlite, 4)},
        "commits_per_task_sqlite": round(commits, 4),
        "load_average_1min": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "rounds": [{**asdict(r), "tasks_per_s": round(r.tasks_per_s, 1)} for r in rounds],
    }


async def main_async(
    tasks: int, pairs: int, concurrency: int, warmup: int, data_root: Path | None
) -> dict[str, Any]:
    # Other processes on the machine are the main source of noise: the result file says how busy.
    load_before = round(os.getloadavg()[0], 2)
    async with FakeOpenAIServer(record=False) as fake:
        # The first server in a process pays for imports and first connections, and the
        # first SQLite file for opening the library: one untimed round of each.
        for store in STORES:
            await run_round(0, store, fake, warmup, concurrency, data_root)
        rounds: list[Round] = []
        for number in range(1, 2 * pairs + 1):
            store = STORES[(number - 1) % 2]
            rounds.append(await run_round(number, store, fake, tasks, concurrency, data_root))
            print(
                f"round {number} ({store}): {rounds[-1].tasks_per_s:.1f} tasks/s",
                file=sys.stderr,
                flush=True,
            )
    return report(rounds, tasks, concurrency, warmup, data_root, load_before)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2 pairs of 400 tasks (< 30 s)")
    parser.add_argument("--tasks", type=int, help="tasks a round (default 2000; quick 400)")
    parser.add_argument("--pairs", type=int, help="(memory, sqlite) pairs (default 3; quick 2)")
    parser.add_argument("--concurrency", type=int, default=64, help="tasks in flight (64)")
    parser.add_argument(
        "--data-root",
        type=Path,
        help="where the sqlite rounds' temporary data_dirs go (default: the system's temp dir)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = parser.parse_args(argv)
    args.tasks = args.tasks or (400 if args.quick else 2000)
    args.pairs = args.pairs or (2 if args.quick else 3)
    if min(args.tasks, args.pairs, args.concurrency) < 1:
        parser.error("--tasks, --pairs and --concurrency must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warmup = min(args.tasks, 200)
    result = asyncio.run(
        main_async(args.tasks, args.pairs, args.concurrency, warmup, args.data_root)
    )
    _harness.write_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
