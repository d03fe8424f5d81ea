"""`aiproc events`: provider events (failovers, breakers, health) as they happen, one a line."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping
from typing import Any

from aiproc.client import DeadlineExceeded, ProviderEvent, ProviderEventKind, to_json
from aiproc.server.cli.common import (
    EXIT_FAILURE,
    add_json_flag,
    client_from,
    connection_options,
    warn,
)
from aiproc.server.cli.info import seconds


def add_parser(commands: argparse._SubParsersAction[Any], env: Mapping[str, str]) -> None:
    parser = commands.add_parser(
        "events",
        parents=[connection_options(env)],
        help="print provider events (failovers, breakers, health) until interrupted",
        description="Prints one line per provider event as the server publishes it: "
        "failovers, circuit breakers opening and recovering, health changes, pauses. "
        "Runs until interrupted, or for --timeout seconds when given; events from before "
        "it started are not shown.",
    )
    add_json_flag(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_watch(args))


async def _watch(args: argparse.Namespace) -> int:
    async with client_from(args) as client, client.watch_events(timeout=args.timeout) as events:
        try:
            async for event in events:
                # Flushed line by line: the reader is often a pipe, watching live.
                print(to_json(event) if args.json else render_event(event), flush=True)
        except DeadlineExceeded:
            return 0  # --timeout said how long to watch
    warn("the server ended the event stream")
    return EXIT_FAILURE


def render_event(event: ProviderEvent) -> str:
    """One line for people: when, what, to which provider(s), and why."""
    at = "-" if event.at is None else event.at.strftime("%Y-%m-%dT%H:%M:%SZ")
    match event.kind:
        case ProviderEventKind.FAILOVER:
            subject = f"{event.provider} -> {event.to_provider}"
            if event.task_id:
                subject += f" (task {event.task_id})"
        case ProviderEventKind.HEALTH_CHANGED:
            subject = f"{event.provider} -> {event.health}"
        case ProviderEventKind.RECOVERED:
            subject = f"{event.provider} after {seconds(event.downtime)}"
        case _:
            subject = event.provider
    line = " ".join(part for part in (at, event.kind, subject) if part)
    return f"{line}: {event.reason}" if event.reason else line
