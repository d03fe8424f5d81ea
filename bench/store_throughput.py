"""What the SQLite and Redis stores cost: the same workload with store "memory", "sqlite"
and "redis", in one process.

    .venv/bin/python bench/store_throughput.py          # 3 x (memory, sqlite, redis), 2,000 tasks
    .venv/bin/python bench/store_throughput.py --quick  # 2 x (memory, sqlite, redis), 400 tasks

Each round starts an in-process aiproc server (AiprocServer.start) in front of
a fake OpenAI-compatible provider answering at once, and queues N tasks through
the Python client, `--concurrency` of them in flight at a time, from the first
QueueTask to the last result (each result acknowledged). Telemetry is off and
the rate limit out of reach. "sqlite" rounds get a fresh data_dir in a new
temporary directory (under --data-root if given), removed after the round, so
every round starts from an empty file. "redis" rounds use the Redis at --redis
(default redis://127.0.0.1:6379/0) under a fresh key prefix
"aiproc-bench-<uuid hex>", whose keys are deleted after the round (SCAN + DEL,
never KEYS, so a shared Redis is not blocked); if that Redis does not answer,
the redis rounds are skipped with a note. Rounds cycle memory, sqlite, redis,
memory... after one untimed warm-up with each store; the medians are compared,
and each round with the memory round that opened its cycle. CPU time is the
whole process's, every thread included (the store's writer thread, but also
the client and the fake provider, which run in it too); Redis's own CPU is in
another process, so it is reported apart, with the commands Redis processed
(each call inside a Lua script counted as one), both read from INFO around the
whole round (server start and stop included, and any other client of that
Redis too).
The process runs with the garbage-collector settings of `aiproc serve`
(server/gc_tuning.py). Prints one table and writes bench/results/store.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _harness
import redis.asyncio as redis_asyncio

from aiproc.server.app import AiprocServer
from aiproc.server.cluster.connection import open_redis
from aiproc.server.core.errors import StoreError
from aiproc.server.fakes.openai_server import FakeOpenAIServer
from aiproc.server.store.sqlite import SqliteStore

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "store.json"
STORES = ("memory", "sqlite", "redis")
"""The order of every cycle of rounds; memory first, as the others are compared with it."""
REDIS_URL = "redis://127.0.0.1:6379/0"
GOAL = 0.8
"""The sqlite/memory (and redis/memory) throughput ratio aimed for."""
DELETE_BATCH = 500
"""Keys per DEL when a redis round's keys are cleaned up."""


@dataclass(frozen=True, slots=True)
class Round:
    number: int
    store: str
    """memory, sqlite or redis."""
    tasks: int
    failed: int
    seconds: float
    cpu_seconds: float
    commits: int | None
    """SQLite transactions committed during the timed part; None for the others."""
    file_bytes: int | None
    """Size of data_dir's files once the server stopped; None for the others."""
    redis_commands: int | None = None
    """Commands Redis processed over the whole round (start and stop included, calls inside
    Lua scripts counted one by one); None for the others."""
    redis_cpu_seconds: float | None = None
    """CPU time of the Redis server over the whole round; None for the others."""

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.seconds

    @property
    def cpu_ms_per_task(self) -> float:
        return 1000 * self.cpu_seconds / self.tasks

    @property
    def commits_per_task(self) -> float | None:
        return None if self.commits is None else self.commits / self.tasks

    @property
    def redis_commands_per_task(self) -> float | None:
        return None if self.redis_commands is None else self.redis_commands / self.tasks

    @property
    def redis_cpu_ms_per_task(self) -> float | None:
        seconds = self.redis_cpu_seconds
        return None if seconds is None else 1000 * seconds / self.tasks


@dataclass(frozen=True, slots=True)
class RedisCounters:
    """What INFO says the Redis server has done since it started."""

    commands: int
    cpu_seconds: float


async def reach_redis(url: str) -> tuple[redis_asyncio.Redis | None, str | None]:
    """The bench's own connection to `url` (for INFO and cleaning up), or None and why not."""
    try:
        return await open_redis(url), None
    except StoreError as exc:
        return None, str(exc)


async def redis_counters(client: redis_asyncio.Redis) -> RedisCounters:
    info = await client.info("stats", "cpu")
    return RedisCounters(
        commands=int(info["total_commands_processed"]),
        cpu_seconds=float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
    )


async def delete_keys(client: redis_asyncio.Redis, prefix: str) -> int:
    """Deletes every key under `prefix`; returns how many there were.

    SCAN walks the keyspace a little at a time, where KEYS would block a shared Redis
    for as long as it takes to list all of it.
    """
    deleted = 0
    batch: list[str] = []
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= DELETE_BATCH:
            deleted += await client.delete(*batch)
            batch.clear()
    if batch:
        deleted += await client.delete(*batch)
    return deleted


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
    redis: redis_asyncio.Redis | None,
    redis_url: str,
) -> Round:
    """One round with `store`; a redis round needs `redis`, the bench's connection to
    `redis_url`."""
    if store == "redis":
        assert redis is not None
        return await run_redis_round(number, fake, tasks, concurrency, redis, redis_url)
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


async def run_redis_round(
    number: int,
    fake: FakeOpenAIServer,
    tasks: int,
    concurrency: int,
    redis: redis_asyncio.Redis,
    redis_url: str,
) -> Round:
    # A prefix of its own: the round starts from an empty keyspace, and its keys (results
    # and idempotency keys would otherwise live for result_ttl) can all be deleted after.
    prefix = f"aiproc-bench-{uuid.uuid4().hex}"
    with tempfile.TemporaryDirectory(prefix="aiproc-store-bench-") as folder:
        config = _harness.bench_config(
            fake,
            concurrency,
            # data_dir is unused by a Redis store; a temporary one keeps ./data untouched.
            server={"store": redis_url, "redis_prefix": prefix, "data_dir": folder},
            telemetry={"enabled": False},
        )
        try:
            before = await redis_counters(redis)
            timing = await _harness.run_round(config, tasks, concurrency)
            after = await redis_counters(redis)
        finally:
            await delete_keys(redis, prefix)
    return Round(
        number=number,
        store="redis",
        tasks=tasks,
        failed=timing.failed,
        seconds=timing.seconds,
        cpu_seconds=timing.cpu_seconds,
        commits=None,
        file_bytes=None,
        # Less the INFO call itself, counted in `after`.
        redis_commands=after.commands - before.commands - 1,
        redis_cpu_seconds=after.cpu_seconds - before.cpu_seconds,
    )


def median(rounds: list[Round], store: str, key: str) -> float:
    return statistics.median(float(getattr(r, key)) for r in rounds if r.store == store)


def cycle_ratios(rounds: list[Round], stores: Sequence[str], store: str) -> list[float]:
    """Each `store` round against the memory round that opened its cycle: less exposed to
    the machine's drift than the medians are, and the spread shows the noise."""
    cycles = [rounds[i : i + len(stores)] for i in range(0, len(rounds), len(stores))]
    position = stores.index(store)
    return [cycle[position].tasks_per_s / cycle[0].tasks_per_s for cycle in cycles]


def optional(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def print_rounds(rounds: list[Round]) -> None:
    print(
        f"{'round':>5}  {'store':<6}  {'tasks/s':>9}  {'cpu ms/task':>11}  {'commits/task':>12}"
        f"  {'redis cmds/task':>15}  {'redis cpu ms/task':>17}"
    )
    for r in rounds:
        failed = f"  ({r.failed} failed)" if r.failed else ""
        print(
            f"{r.number:>5}  {r.store:<6}  {r.tasks_per_s:>9.1f}  "
            f"{r.cpu_ms_per_task:>11.3f}  {optional(r.commits_per_task, 3):>12}  "
            f"{optional(r.redis_commands_per_task, 1):>15}  "
            f"{optional(r.redis_cpu_ms_per_task, 3):>17}{failed}"
        )


def report(
    rounds: list[Round],
    stores: Sequence[str],
    redis_skipped: str | None,
    tasks: int,
    concurrency: int,
    warmup: int,
    data_root: Path | None,
    load_before: float,
) -> dict[str, Any]:
    speed = {store: median(rounds, store, "tasks_per_s") for store in stores}
    cpu = {store: median(rounds, store, "cpu_ms_per_task") for store in stores}
    others = stores[1:]
    ratios = {store: speed[store] / speed["memory"] for store in others}
    # The goal is the embedded store's; Redis's ratio is the cost per replica of sharing.
    met = {"sqlite": ratios["sqlite"] >= GOAL}
    print(
        f"\nstore throughput: {tasks} tasks a round, {concurrency} in flight, "
        f"fake provider at 0 ms, telemetry off, {warmup}-task warm-up of each store not counted"
    )
    print_rounds(rounds)
    print("median  " + ", ".join(f"{store} {speed[store]:.1f} tasks/s" for store in stores))
    for store in others:
        verdict = (
            f"goal >= {GOAL}: {'met' if met[store] else 'NOT met'}" if store in met else "no goal"
        )
        print(
            f"{store}/memory = {ratios[store]:.3f} ({verdict}); "
            f"cpu {cpu['memory']:.3f} -> {cpu[store]:.3f} ms/task in this process"
        )
    pairs = {store: cycle_ratios(rounds, stores, store) for store in others}
    for store in others:
        print(f"per round {store}/memory: {', '.join(f'{x:.3f}' for x in pairs[store])}")
    commits = median(rounds, "sqlite", "commits_per_task")
    print(f"sqlite commits per task: {commits:.3f}")
    redis: dict[str, Any] = {"skipped": redis_skipped}
    if redis_skipped is None:
        redis["commands_per_task"] = round(median(rounds, "redis", "redis_commands_per_task"), 2)
        redis["server_cpu_ms_per_task"] = round(median(rounds, "redis", "redis_cpu_ms_per_task"), 4)
        print(
            f"redis commands per task: {redis['commands_per_task']:.1f}, redis-server cpu "
            f"{redis['server_cpu_ms_per_task']:.3f} ms/task (whole rounds, from INFO)"
        )
    else:
        print(f"redis: skipped ({redis_skipped})")
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
        "tasks_per_s": {store: round(speed[store], 1) for store in stores},
        "ratio_sqlite_memory": round(ratios["sqlite"], 4),
        "ratio_redis_memory": round(ratios["redis"], 4) if "redis" in ratios else None,
        "pair_ratios": {store: [round(x, 4) for x in pairs[store]] for store in others},
        "goal_ratio": GOAL,
        "goal_met": met,
        "cpu_ms_per_task": {store: round(cpu[store], 4) for store in stores},
        "commits_per_task_sqlite": round(commits, 4),
        "redis": redis,
        "load_average_1min": {"before": load_before, "after": round(os.getloadavg()[0], 2)},
        "rounds": [{**asdict(r), "tasks_per_s": round(r.tasks_per_s, 1)} for r in rounds],
    }


async def main_async(
    tasks: int, repeats: int, concurrency: int, warmup: int, data_root: Path | None, redis_url: str
) -> dict[str, Any]:
    with _harness.serving_gc():
        return await _measure(tasks, repeats, concurrency, warmup, data_root, redis_url)


async def _measure(
    tasks: int, repeats: int, concurrency: int, warmup: int, data_root: Path | None, redis_url: str
) -> dict[str, Any]:
    # Other processes on the machine are the main source of noise: the result file says how busy.
    load_before = round(os.getloadavg()[0], 2)
    redis, redis_skipped = await reach_redis(redis_url)
    if redis_skipped is not None:
        print(f"note: no redis rounds: {redis_skipped}", file=sys.stderr, flush=True)
    stores = STORES if redis is not None else tuple(s for s in STORES if s != "redis")
    try:
        async with FakeOpenAIServer(record=False) as fake:
            # The first server in a process pays for imports and first connections, and the
            # first SQLite file for opening the library: one untimed round of each.
            for store in stores:
                await run_round(0, store, fake, warmup, concurrency, data_root, redis, redis_url)
            rounds: list[Round] = []
            for number in range(1, len(stores) * repeats + 1):
                store = stores[(number - 1) % len(stores)]
                rounds.append(
                    await run_round(
                        number, store, fake, tasks, concurrency, data_root, redis, redis_url
                    )
                )
                print(
                    f"round {number} ({store}): {rounds[-1].tasks_per_s:.1f} tasks/s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        if redis is not None:
            await redis.aclose()
    return report(rounds, stores, redis_skipped, tasks, concurrency, warmup, data_root, load_before)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2 cycles of 400 tasks (< 30 s)")
    parser.add_argument("--tasks", type=int, help="tasks a round (default 2000; quick 400)")
    parser.add_argument(
        "--repeats",
        "--pairs",
        dest="repeats",
        type=int,
        help="rounds of each store, i.e. (memory, sqlite, redis) cycles (default 3; quick 2)",
    )
    parser.add_argument("--concurrency", type=int, default=64, help="tasks in flight (64)")
    parser.add_argument(
        "--data-root",
        type=Path,
        help="where the sqlite rounds' temporary data_dirs go (default: the system's temp dir)",
    )
    parser.add_argument(
        "--redis",
        default=REDIS_URL,
        metavar="URL",
        help=f"the Redis of the redis rounds (default {REDIS_URL}); skipped if it does not answer",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = parser.parse_args(argv)
    args.tasks = args.tasks or (400 if args.quick else 2000)
    args.repeats = args.repeats or (2 if args.quick else 3)
    if min(args.tasks, args.repeats, args.concurrency) < 1:
        parser.error("--tasks, --repeats and --concurrency must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    warmup = min(args.tasks, 200)
    result = asyncio.run(
        main_async(args.tasks, args.repeats, args.concurrency, warmup, args.data_root, args.redis)
    )
    _harness.write_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
