"""`aiproc stats`, `aiproc get ID` and `aiproc cancel ID`, printed compactly or as JSON."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from aiproc.client import (
    Attempt,
    BreakerState,
    HealthLevel,
    LatencySummary,
    ProviderStats,
    Stats,
    TaskInfo,
    TaskState,
    to_json,
)
from aiproc.server.cli.common import add_json_flag, client_from, connection_options, warn

PREVIEW = 72
"""Characters of enhanced content `get` shows."""


def add_parsers(commands: argparse._SubParsersAction[Any], env: Mapping[str, str]) -> None:
    stats = commands.add_parser(
        "stats", parents=[connection_options(env)], help="show the server's statistics"
    )
    add_json_flag(stats)
    stats.set_defaults(run=run_stats)

    get = commands.add_parser(
        "get", parents=[connection_options(env)], help="show one task and its result"
    )
    get.add_argument("task_id", metavar="ID")
    add_json_flag(get)
    get.set_defaults(run=run_get)

    cancel = commands.add_parser(
        "cancel", parents=[connection_options(env)], help="cancel a queued or running task"
    )
    cancel.add_argument("task_id", metavar="ID")
    add_json_flag(cancel)
    cancel.set_defaults(run=run_cancel)


def run_stats(args: argparse.Namespace) -> int:
    async def call() -> Stats:
        async with client_from(args) as client:
            return await client.stats()

    stats = asyncio.run(call())
    print(to_json(stats) if args.json else render_stats(stats))
    return 0


def run_get(args: argparse.Namespace) -> int:
    async def call() -> TaskInfo:
        async with client_from(args) as client:
            return await client.get(args.task_id)

    info = asyncio.run(call())
    print(to_json(info) if args.json else render_task(info))
    return 0


def run_cancel(args: argparse.Namespace) -> int:
    async def call() -> TaskState:
        async with client_from(args) as client:
            return await client.cancel(args.task_id)

    state = asyncio.run(call())
    print(to_json(state) if args.json else state)
    if state is not TaskState.CANCELLED:
        warn(f"task {args.task_id} had already finished: {state}")
    return 0


def seconds(value: float) -> str:
    """A duration for people: "850ms", "2.50s"."""
    return f"{value * 1000:.0f}ms" if value < 1 else f"{value:.2f}s"


def _moment(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="milliseconds")


def _latency(name: str, summary: LatencySummary) -> str:
    return (
        f"{name} p50 {seconds(summary.p50)}, p90 {seconds(summary.p90)}, "
        f"p99 {seconds(summary.p99)}, max {seconds(summary.max)} ({summary.samples} tasks)"
    )


def render_stats(stats: Stats) -> str:
    """Statistics as a few aligned lines."""
    depths = ", ".join(f"{depth.priority} {depth.depth}" for depth in stats.queue_depths)
    events = ", ".join(f"{item.kind} {item.count}" for item in stats.event_counts)
    counters = stats.counters
    lines = [
        f"server     {'running' if stats.is_running else 'shutting down'}"
        f" since {_moment(stats.started_at)}",
        f"queue      {stats.queue_size} of {stats.queue_capacity} waiting"
        + (f" ({depths})" if depths else ""),
        f"workers    {stats.active_workers} of {stats.total_workers} busy",
        f"tasks      {counters.queued} queued, {counters.completed} completed, "
        f"{counters.failed} failed ({counters.timed_out} timed out), "
        f"{counters.cancelled} cancelled, {counters.rejected} rejected, "
        f"{counters.retried} retried",
        f"resilience {counters.failovers} failovers, {counters.rate_limit_waits} rate-limit waits",
        f"events     {events or 'none'}",
        f"latency    {_latency('queue', stats.queue_latency)}",
        f"           {_latency('processing', stats.processing_latency)}",
        f"streams    {stats.subscribers} open, {stats.undelivered_results} undelivered results",
    ]
    for index, provider in enumerate(stats.providers):
        label = "providers" if index == 0 else ""
        first, second = _provider_lines(provider)
        lines += [f"{label:<10} {first}", f"{'':<10}   {second}"]
    return "\n".join(lines)


def _provider_lines(provider: ProviderStats) -> tuple[str, str]:
    """Who the provider is and its state; then its load and outcomes."""
    enabled = "" if provider.enabled else ", disabled"
    breaker = (
        "off" if provider.breaker_state is BreakerState.UNSPECIFIED else provider.breaker_state
    )
    health = "unknown" if provider.health is HealthLevel.UNSPECIFIED else provider.health
    paused = f", paused {seconds(provider.paused_for)} more" if provider.paused_for > 0 else ""
    limit = f"/{provider.max_concurrent_requests}" if provider.max_concurrent_requests else ""
    return (
        f"{provider.name} ({provider.kind}, {provider.model or '-'}, "
        f"priority {provider.priority}{enabled}): {provider.state or '-'}, "
        f"breaker {breaker}, health {health}{paused}",
        f"{provider.in_flight}{limit} in flight, {provider.requests} requests, "
        f"{provider.failures} failures ({provider.error_rate:.0%} recent errors), "
        f"{provider.rate_limited} rate-limited, avg {seconds(provider.average_latency)}",
    )


def render_task(info: TaskInfo) -> str:
    """A task as aligned `name  value` lines, with a preview of its result."""
    rows = [
        ("task", info.task_id),
        ("state", str(info.state)),
        ("url", info.spec.url),
        ("priority", str(info.spec.priority)),
        ("created", _moment(info.created_at)),
        ("started", _moment(info.started_at)),
        ("finished", _moment(info.finished_at)),
        ("attempts", str(info.attempts)),
    ]
    if info.spec.max_retries is not None:
        rows.append(("retries", f"at most {info.spec.max_retries}"))
    if info.spec.metadata:
        rows.append(("metadata", ", ".join(f"{k}={v}" for k, v in info.spec.metadata.items())))
    result = info.result
    if result is not None:
        rows.append(("provider", f"{result.provider or '-'} ({result.model or '-'})"))
        rows.append(
            ("tokens", f"{result.usage.input_tokens} in / {result.usage.output_tokens} out")
        )
        rows.append(
            (
                "timings",
                f"queued {seconds(result.queue_time)}, processed {seconds(result.processing_time)}",
            )
        )
        if result.error is not None:
            rows.append(("error", f"{result.error.code}: {result.error.message}"))
        if result.success:
            rows.append(("content", _preview(result.enhanced_content)))
        rows += [
            ("history" if number == 1 else "", _attempt_line(number, attempt))
            for number, attempt in enumerate(result.history, start=1)
        ]
    return "\n".join(f"{name:<10} {value}" for name, value in rows)


def _attempt_line(number: int, attempt: Attempt) -> str:
    """One provider call: "2. backup (850ms): ok" or "1. primary (30ms): transient: HTTP 503"."""
    outcome = "ok" if attempt.error is None else f"{attempt.error.code}: {attempt.error.message}"
    return f"{number}. {attempt.provider or '-'} ({seconds(attempt.duration)}): {outcome}"


def _preview(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else ""
    more = len(text) > len(first) or len(first) > PREVIEW
    shown = first[:PREVIEW]
    return f"{shown}... ({len(text)} characters; --json for all)" if more else shown
