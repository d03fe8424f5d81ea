"""What tracing costs: the same workload with telemetry off and on, in one process.

    .venv/bin/python bench/tracing_overhead.py            # 5 x (off, on), 2,000 tasks each
    .venv/bin/python bench/tracing_overhead.py --quick    # 2 x (off, on), 400 tasks each

Each round starts an in-process aiproc server (AiprocServer.start) in front of
a fake OpenAI-compatible provider answering at once, and queues N tasks through
the Python client, `--concurrency` of them in flight at a time. "on" rounds trace
every task (sampler ratio 1) and export spans and metrics over OTLP/gRPC to a
sink in another process (bench/otlp_sink.py), so receiving costs the measured
process nothing. Rounds alternate off, on, off, on... after one untimed warm-up;
the medians are compared. The process runs with the garbage-collector settings
of `aiproc serve` (server/gc_tuning.py) in both kinds of round. Prints one
table and writes bench/results/tracing.json.

OTEL_* variables of the calling shell are ignored: the rounds differ only in
what the script sets.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _harness

from aiproc.server.config import Config
from aiproc.server.fakes.openai_server import FakeOpenAIServer

HERE = Path(__file__).resolve().parent
SINK = HERE / "otlp_sink.py"
RESULTS = HERE / "results" / "tracing.json"
LISTENING = "otlp sink listening on "


@dataclass(frozen=True, slots=True)
class Round:
    number: int
    telemetry: str
    """off or on."""
    tasks: int
    failed: int
    seconds: float
    cpu_seconds: float
    spans: int | None
    """Spans the sink received; None with telemetry off."""
    metric_points: int | None
    export_bytes: int | None

    @property
    def tasks_per_s(self) -> float:
        return self.tasks / self.seconds

    @property
    def cpu_ms_per_task(self) -> float:
        return 1000 * self.cpu_seconds / self.tasks


@dataclass(frozen=True, slots=True)
class SinkCounts:
    requests: int
    bytes: int
    spans: int
    metric_points: int
    log_records: int


class Sink:
    """bench/otlp_sink.py in a child process."""

    def __init__(self, process: asyncio.subprocess.Process, endpoint: str) -> None:
        self._process = process
        self.endpoint = endpoint

    @classmethod
    async def start(cls) -> Sink:
        process = await asyncio.create_subprocess_exec(
            sys.executable, str(SINK), stdout=asyncio.subprocess.PIPE
        )
        assert process.stdout is not None
        try:
            async with asyncio.timeout(20):
                line = (await process.stdout.readline()).decode().strip()
        except BaseException:
            process.kill()
            await process.wait()
            raise
        if not line.startswith(LISTENING):
            process.kill()
            await process.wait()
            raise RuntimeError(f"the OTLP sink did not start: {line!r}")
        return cls(process, "http://" + line.removeprefix(LISTENING))

    async def stop(self) -> SinkCounts:
        """Stops the sink and returns what it received."""
        self._process.send_signal(signal.SIGTERM)
        assert self._process.stdout is not None
        async with asyncio.timeout(20):
            output = await self._process.stdout.read()
            await self._process.wait()
        return SinkCounts(**json.loads(output.decode().strip().splitlines()[-1]))

    async def kill(self) -> None:
        if self._process.returncode is None:
            self._process.kill()
            await self._process.wait()


def bench_config(fake: FakeOpenAIServer, concurrency: int, sink: Sink | None) -> Config:
    """A server that never waits on its own limits (nor on a disk): only CPU bounds it."""
    telemetry: dict[str, object] = {"enabled": False}
    if sink is not None:
        telemetry = {"enabled": True, "otlp_endpoint": sink.endpoint, "sampler_ratio": 1.0}
    return _harness.bench_config(
        fake,
        concurrency,
        # In memory: the rounds should differ by telemetry only, not by disk writes.
        server={"store": "memory"},
        telemetry=telemetry,
    )


async def run_round(
    number: int, on: bool, fake: FakeOpenAIServer, tasks: int, concurrency: int
) -> Round:
    sink = await Sink.start() if on else None
    try:
        timing = await _harness.run_round(bench_config(fake, concurrency, sink), tasks, concurrency)
        counts = await sink.stop() if sink is not None else None
    finally:
        if sink is not None:
            await sink.kill()
    return Round(
        number=number,
        telemetry="on" if on else "off",
        tasks=tasks,
        failed=timing.failed,
        seconds=timing.seconds,
        cpu_seconds=timing.cpu_seconds,
        spans=counts.spans if counts else None,
        metric_points=counts.metric_points if counts else None,
        export_bytes=counts.bytes if counts else None,
    )


def median(rounds: list[Round], telemetry: str, key: str) -> float:
    return statistics.median(float(getattr(r, key)) for r in rounds if r.telemetry == telemetry)


def report(rounds: list[Round], tasks: int, concurrency: int, warmup: int) -> dict[str, Any]:
    off = median(rounds, "off", "tasks_per_s")
    on = median(rounds, "on", "tasks_per_s")
    cpu_off = median(rounds, "off", "cpu_ms_per_task")
    cpu_on = median(rounds, "on", "cpu_ms_per_task")
    print(
        f"\ntracing overhead: {tasks} tasks a round, {concurrency} in flight, "
        f"fake provider at 0 ms, {warmup}-task warm-up not counted"
    )
    print(f"{'round':>5}  {'telemetry':<9}  {'tasks/s':>9}  {'cpu ms/task':>11}  {'spans':>8}")
    for r in rounds:
        spans = "-" if r.spans is None else str(r.spans)
        failed = f"  ({r.failed} failed)" if r.failed else ""
        print(
            f"{r.number:>5}  {r.telemetry:<9}  {r.tasks_per_s:>9.1f}  "
            f"{r.cpu_ms_per_task:>11.3f}  {spans:>8}{failed}"
        )
    ratio = on / off
    print(
        f"median  off {off:.1f} tasks/s, on {on:.1f} tasks/s: on/off = {ratio:.3f} "
        f"({100 * (1 - ratio):.1f}% of the throughput lost); "
        f"cpu {cpu_off:.3f} -> {cpu_on:.3f} ms/task"
    )
    # Each on round against the off round just before it: less exposed to the
    # machine's drift than the medians are, and the spread shows the noise.
    pairs = [
        on.tasks_per_s / off.tasks_per_s for off, on in zip(rounds[::2], rounds[1::2], strict=True)
    ]
    print(f"per pair on/off: {', '.join(f'{x:.3f}' for x in pairs)}")
    on_spans = [r.spans / r.tasks for r in rounds if r.spans is not None]
    if on_spans:
        print(f"spans exported per task (on rounds): {statistics.median(on_spans):.2f}")
    return {
        **_harness.environment(),
        "tasks_per_round": tasks,
        "concurrency": concurrency,
        "warmup_tasks": warmup,
        "provider_latency_ms": 0,
        "tasks_per_s": {"off": round(off, 1), "on": round(on, 1)},
        "ratio_on_off": round(ratio, 4),
        "pair_ratios": [round(x, 4) for x in pairs],
        "cpu_ms_per_task": {"off": round(cpu_off, 4), "on": round(cpu_on, 4)},
        "spans_per_task_on": round(statistics.median(on_spans), 2) if on_spans else None,
        "rounds": [{**asdict(r), "tasks_per_s": round(r.tasks_per_s, 1)} for r in rounds],
    }


async def main_async(tasks: int, pairs: int, concurrency: int, warmup: int) -> dict[str, Any]:
    with _harness.serving_gc():
        return await _measure(tasks, pairs, concurrency, warmup)


async def _measure(tasks: int, pairs: int, concurrency: int, warmup: int) -> dict[str, Any]:
    async with FakeOpenAIServer(record=False) as fake:
        # The first server in a process pays for imports and first connections.
        await run_round(0, False, fake, warmup, concurrency)
        rounds: list[Round] = []
        for number in range(1, 2 * pairs + 1):
            on = number % 2 == 0
            rounds.append(await run_round(number, on, fake, tasks, concurrency))
            print(
                f"round {number} ({'on' if on else 'off'}): {rounds[-1].tasks_per_s:.1f} tasks/s",
                file=sys.stderr,
                flush=True,
            )
    return report(rounds, tasks, concurrency, warmup)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2 pairs of 400 tasks (< 2 min)")
    parser.add_argument("--tasks", type=int, help="tasks a round (default 2000; quick 400)")
    parser.add_argument("--pairs", type=int, help="(off, on) pairs (default 5; quick 2)")
    parser.add_argument("--concurrency", type=int, default=64, help="tasks in flight (64)")
    parser.add_argument("--output", type=Path, default=RESULTS, help=f"default {RESULTS}")
    args = parser.parse_args(argv)
    args.tasks = args.tasks or (400 if args.quick else 2000)
    args.pairs = args.pairs or (2 if args.quick else 5)
    if min(args.tasks, args.pairs, args.concurrency) < 1:
        parser.error("--tasks, --pairs and --concurrency must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in [name for name in os.environ if name.startswith("OTEL_")]:
        # The exporters read some settings (OTEL_BSP_*, timeouts) from the process environment.
        del os.environ[name]
    warmup = min(args.tasks, 200)
    result = asyncio.run(main_async(args.tasks, args.pairs, args.concurrency, warmup))
    _harness.write_result(args.output, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
