"""`aiproc events`: the human line of each kind of provider event."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aiproc.client import HealthLevel, ProviderEvent, ProviderEventKind
from aiproc.server.cli.events import render_event
from aiproc.server.cli.main import build_parser

AT = datetime(2026, 11, 26, 2, 30, 1, 250_000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("event", "line"),
    [
        (
            ProviderEvent(
                kind=ProviderEventKind.FAILOVER,
                at=AT,
                provider="primary",
                to_provider="secondary",
                task_id="3f2a",
                reason="500 from primary",
            ),
            "2026-11-26T02:30:01Z failover primary -> secondary (task 3f2a): 500 from primary",
        ),
        (
            ProviderEvent(
                kind=ProviderEventKind.HEALTH_CHANGED,
                at=AT,
                provider="primary",
                health=HealthLevel.DEGRADED,
                reason="error rate 12%",
            ),
            "2026-11-26T02:30:01Z health_changed primary -> degraded: error rate 12%",
        ),
        (
            ProviderEvent(
                kind=ProviderEventKind.RECOVERED, at=AT, provider="primary", downtime=42.5
            ),
            "2026-11-26T02:30:01Z recovered primary after 42.50s",
        ),
        (
            ProviderEvent(
                kind=ProviderEventKind.BREAKER_OPENED,
                at=AT,
                provider="primary",
                reason="5 failures in a row",
            ),
            "2026-11-26T02:30:01Z breaker_opened primary: 5 failures in a row",
        ),
        (
            ProviderEvent(
                kind=ProviderEventKind.ALL_PROVIDERS_DOWN,
                at=AT,
                reason="primary: circuit open; backup: paused 1.5s",
            ),
            "2026-11-26T02:30:01Z all_providers_down: primary: circuit open; backup: paused 1.5s",
        ),
        (ProviderEvent(kind=ProviderEventKind.UNSPECIFIED), "- unspecified"),
    ],
)
def test_each_event_is_one_line(event: ProviderEvent, line: str) -> None:
    assert render_event(event) == line


def test_events_arguments() -> None:
    args = build_parser({}).parse_args(["events", "--json", "--timeout", "5"])
    assert (args.json, args.timeout) == (True, 5.0)
    args = build_parser({}).parse_args(["events"])
    assert (args.json, args.timeout) == (False, None)  # no deadline: it watches until interrupted
