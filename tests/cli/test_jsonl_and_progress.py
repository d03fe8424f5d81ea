"""Batch input parsing, the progress bar, and the human renderings of stats and tasks."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import pytest

from aiproc.client import (
    Attempt,
    BreakerState,
    Counters,
    EventCount,
    HealthLevel,
    LatencySummary,
    Priority,
    ProviderEventKind,
    ProviderStats,
    QueueDepth,
    Stats,
    TaskError,
    TaskInfo,
    TaskResult,
    TaskSpec,
    TaskState,
)
from aiproc.client.models import ErrorCode, TokenUsage
from aiproc.server.cli.info import render_stats, render_task, seconds
from aiproc.server.cli.jsonl import BadLine, BatchItem, count_tasks, parse_line, read_items
from aiproc.server.cli.progress import ProgressBar, Tally, render, summary


def test_a_full_line_becomes_a_batch_item() -> None:
    line = (
        '{"url": "https://example.com/a", "content": "text", "priority": "HIGH", "timeout": 30,'
        ' "instructions": "be brief", "model": "m", "idempotency_key": "k",'
        ' "metadata": {"a": "b"}}'
    )
    assert parse_line(7, line) == BatchItem(
        line=7,
        url="https://example.com/a",
        content="text",
        priority=Priority.HIGH,
        task_timeout=30.0,
        instructions="be brief",
        model="m",
        idempotency_key="k",
        metadata={"a": "b"},
    )


def test_optional_fields_default() -> None:
    item = parse_line(1, '{"url": "https://example.com/a", "content": "x", "model": null}')
    assert item == BatchItem(line=1, url="https://example.com/a", content="x")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"content": "x"}', "url: required"),
        ('{"url": "https://e.com", "content": ""}', "content: required"),
        ('{"url": "https://e.com", "content": "x", "priority": "urgent"}', "priority: expected"),
        ('{"url": "https://e.com", "content": "x", "timeout": "30s"}', "timeout: expected"),
        ('{"url": "https://e.com", "content": "x", "timeout": -1}', "timeout: must be"),
        ('{"url": "https://e.com", "content": "x", "timeout": true}', "timeout: expected"),
        ('{"url": "https://e.com", "content": "x", "metadata": {"a": 1}}', "metadata: expected"),
        ('{"url": "https://e.com", "content": "x", "model": 3}', "model: expected a string"),
        ('{"url": "https://e.com", "content": "x", "colour": "red"}', "unknown field 'colour'"),
    ],
)
def test_bad_lines_say_why(line: str, reason: str) -> None:
    parsed = parse_line(3, line)
    assert isinstance(parsed, BadLine)
    assert parsed.line == 3
    assert reason in parsed.reason


def test_read_items_numbers_lines_and_skips_blank_ones() -> None:
    lines = [
        '{"url": "https://e.com/1", "content": "a"}\n',
        "\n",
        "oops\n",
        '{"url": "https://e.com/4", "content": "b"}',
    ]
    items = list(read_items(lines))
    assert [item.line for item in items] == [1, 3, 4]
    assert isinstance(items[1], BadLine)
    assert count_tasks(lines) == 3


def test_the_bar_renders_counts_and_fraction() -> None:
    tally = Tally(total=200, succeeded=90, failed=8, bad=2, in_flight=64)
    line = render(tally, 12.34)
    assert line.startswith("[" + "#" * 12 + "-" * 12 + "]  50% 100/200")
    assert "90 ok, 8 failed, 2 bad" in line
    assert "64 in flight" in line
    assert "12.3s" in line
    assert summary(tally, 3.0) == "100 of 200 lines in 3.0s: 90 succeeded, 8 failed, 2 bad"
    assert render(Tally(total=0), 0.0).startswith("[" + "#" * 24 + "] 100% 0/0")


def test_a_live_bar_redraws_in_place_at_most_every_tenth_of_a_second() -> None:
    now = [0.0]
    out = io.StringIO()
    bar = ProgressBar(Tally(total=10), out, live=True, clock=lambda: now[0])
    bar.update()
    bar.tally.succeeded = 1
    now[0] = 0.05
    bar.update()  # too soon: skipped
    assert out.getvalue().count("\r") == 1
    now[0] = 0.2
    bar.update()
    assert out.getvalue().count("\r") == 2
    assert "1/10" in out.getvalue()
    bar.note("aiproc: line 3: bad input")
    assert "\raiproc: line 3: bad input\n" in out.getvalue().replace(" " * 20, "")
    bar.finish()
    assert out.getvalue().endswith("aiproc: 1 of 10 lines in 0.2s: 1 succeeded, 0 failed, 0 bad\n")


def test_a_bar_off_a_terminal_prints_only_notes_and_the_summary() -> None:
    out = io.StringIO()
    bar = ProgressBar(Tally(total=2), out, live=False, clock=lambda: 1.0)
    bar.tally.failed = 1
    bar.update()
    bar.note("aiproc: line 1: task t failed")
    bar.tally.succeeded = 1
    bar.update()
    bar.finish()
    assert out.getvalue() == (
        "aiproc: line 1: task t failed\n"
        "aiproc: 2 of 2 lines in 0.0s: 1 succeeded, 1 failed, 0 bad\n"
    )


AT = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_stats_render_compactly() -> None:
    stats = Stats(
        queue_size=3,
        queue_capacity=1000,
        queue_depths=(QueueDepth(Priority.HIGH, 1), QueueDepth(Priority.NORMAL, 2)),
        active_workers=2,
        total_workers=4,
        counters=Counters(
            queued=10, completed=7, failed=1, timed_out=1, failovers=3, rate_limit_waits=2
        ),
        queue_latency=LatencySummary(samples=10, p50=0.001, p90=0.002, p99=0.005, max=0.009),
        providers=(
            ProviderStats(
                name="main",
                kind="openai",
                model="gpt",
                state="paused",
                requests=7,
                failures=4,
                in_flight=1,
                max_concurrent_requests=8,
                breaker_state=BreakerState.HALF_OPEN,
                health=HealthLevel.CRITICAL,
                paused_for=2.5,
                error_rate=0.5,
                priority=1,
                rate_limited=3,
            ),
            ProviderStats(name="spare", kind="offline", priority=2, enabled=False),
        ),
        subscribers=1,
        started_at=AT,
        event_counts=(
            EventCount(ProviderEventKind.FAILOVER, 3),
            EventCount(ProviderEventKind.PAUSED, 1),
        ),
    )
    lines = render_stats(stats).splitlines()
    assert "queue      3 of 1000 waiting (high 1, normal 2)" in lines
    assert "workers    2 of 4 busy" in lines
    assert "10 queued, 7 completed, 1 failed (1 timed out)" in lines[3]
    assert "resilience 3 failovers, 2 rate-limit waits" in lines
    assert "events     failover 3, paused 1" in lines
    assert "queue p50 1ms, p90 2ms, p99 5ms, max 9ms (10 tasks)" in lines[6]
    assert "running since 2025-01-02T03:04:05.000+00:00" in lines[0]
    assert lines[-4:] == [
        "providers  main (openai, gpt, priority 1): paused, breaker half_open, health critical,"
        " paused 2.50s more",
        "             1/8 in flight, 7 requests, 4 failures (50% recent errors), 3 rate-limited,"
        " avg 0ms",
        "           spare (offline, -, priority 2, disabled): -, breaker off, health unknown",
        "             0 in flight, 0 requests, 0 failures (0% recent errors), 0 rate-limited,"
        " avg 0ms",
    ]


def test_stats_without_events_say_so() -> None:
    assert "events     none" in render_stats(Stats()).splitlines()


def test_a_task_renders_with_its_result() -> None:
    info = TaskInfo(
        task_id="t1",
        state=TaskState.FAILED,
        spec=TaskSpec(url="https://example.com/a", content="x", metadata={"k": "v"}),
        created_at=AT,
        attempts=2,
        result=TaskResult(
            task_id="t1",
            error=TaskError(ErrorCode.TIMEOUT, "took too long"),
            provider="main",
            usage=TokenUsage(5, 0),
            processing_time=2.5,
            history=(
                Attempt(
                    provider="main", duration=0.03, error=TaskError(ErrorCode.TRANSIENT, "HTTP 503")
                ),
                Attempt(provider="backup", duration=1.25),
            ),
        ),
    )
    text = render_task(info)
    assert text.splitlines()[:3] == [
        "task       t1",
        "state      failed",
        "url        https://example.com/a",
    ]
    assert "started    -" in text
    assert "metadata   k=v" in text
    assert "error      timeout: took too long" in text
    assert "timings    queued 0ms, processed 2.50s" in text
    assert text.splitlines()[-2:] == [
        "history    1. main (30ms): transient: HTTP 503",
        "           2. backup (1.25s): ok",
    ]
    assert "retries" not in text  # the server's default applied


def test_a_task_with_its_own_retry_budget_shows_it() -> None:
    spec = TaskSpec(url="https://example.com/a", content="x", max_retries=0)
    text = render_task(TaskInfo(task_id="t1", state=TaskState.QUEUED, spec=spec))
    assert "retries    at most 0" in text.splitlines()
    assert "history" not in text  # no result yet
    assert seconds(0.25) == "250ms"
