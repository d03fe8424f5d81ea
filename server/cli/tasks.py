"""`aiproc tasks list` and `aiproc tasks requeue ID`: the caller's tasks, and running one again."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from aiproc.client import TaskInfo, TaskState, to_json
from aiproc.server.cli.common import add_json_flag, client_from, connection_options, warn

DEFAULT_LIMIT = 100
"""Tasks `tasks list` shows unless --limit says otherwise (the server's own default)."""

STATES = tuple(state.value for state in TaskState if state is not TaskState.UNSPECIFIED)
"""What --state accepts: queued, running, succeeded, failed, cancelled."""


def positive_int(text: str) -> int:
    """argparse type: a whole number above zero."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def add_parser(commands: argparse._SubParsersAction[Any], env: Mapping[str, str]) -> None:
    group = commands.add_parser(
        "tasks",
        help="list your tasks, or queue a finished one again",
        description="Commands on the tasks of your client identity (--client-id).",
    )
    actions = group.add_subparsers(dest="tasks_command", metavar="ACTION", required=True)

    listing = actions.add_parser(
        "list",
        parents=[connection_options(env)],
        help="list your tasks, oldest first",
        description="Prints one line per task, oldest first: id, state, priority, "
        "creation time (UTC), attempts, url, and for a failed task its error code.",
    )
    listing.add_argument(
        "--state", choices=STATES, help="only tasks in this state (default: any state)"
    )
    listing.add_argument(
        "--limit",
        metavar="N",
        type=positive_int,
        default=DEFAULT_LIMIT,
        help=f"at most N tasks, the oldest (default {DEFAULT_LIMIT}, at most 10000)",
    )
    add_json_flag(listing)
    listing.set_defaults(run=run_list)

    requeue = actions.add_parser(
        "requeue",
        parents=[connection_options(env)],
        help="queue a finished task again",
        description="Queues a finished task (succeeded, failed, dead-lettered or cancelled) "
        "again, forgetting its result. Fails with FAILED_PRECONDITION while it is queued "
        "or running. Prints the task's new state.",
    )
    requeue.add_argument("task_id", metavar="ID")
    add_json_flag(requeue)
    requeue.set_defaults(run=run_requeue)


def run_list(args: argparse.Namespace) -> int:
    async def call() -> list[TaskInfo]:
        async with client_from(args) as client:
            return await client.list_tasks(state=args.state, limit=args.limit)

    tasks = asyncio.run(call())
    if args.json:
        print(to_json(tasks))
    elif tasks:
        print(render_tasks(tasks))
    if len(tasks) >= args.limit:
        warn(f"showing the oldest {len(tasks)} tasks; there may be more (see --limit)")
    return 0


def run_requeue(args: argparse.Namespace) -> int:
    async def call() -> TaskState:
        async with client_from(args) as client:
            return await client.requeue(args.task_id)

    state = asyncio.run(call())
    print(to_json(state) if args.json else state)
    return 0


def _created(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%dT%H:%M:%SZ")


def _columns(info: TaskInfo) -> list[str]:
    attempts = f"{info.attempts} attempt{'' if info.attempts == 1 else 's'}"
    columns = [
        info.task_id,
        str(info.state),
        str(info.spec.priority),
        _created(info.created_at),
        attempts,
        info.spec.url,
    ]
    error = info.result.error if info.result is not None else None
    if info.state is TaskState.FAILED and error is not None:
        columns.append(str(error.code))
    return columns


def render_tasks(tasks: Sequence[TaskInfo]) -> str:
    """One line per task, its columns aligned: id, state, priority, created, attempts,
    url, and for a failed task its error code."""
    rows = [_columns(info) for info in tasks]
    widths = [max((len(row[i]) for row in rows if len(row) > i), default=0) for i in range(7)]
    lines = []
    for row in rows:
        # The url is last unless an error code follows it: pad it only then.
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        lines.append("  ".join(padded))
    return "\n".join(lines)
