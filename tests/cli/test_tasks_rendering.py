"""`aiproc tasks`: its arguments and the human line of each task, without a server."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aiproc.client import ErrorCode, Priority, TaskError, TaskInfo, TaskResult, TaskSpec, TaskState
from aiproc.server.cli.main import build_parser
from aiproc.server.cli.tasks import render_tasks

AT = datetime(2026, 11, 26, 2, 30, 1, 250_000, tzinfo=UTC)


def test_tasks_list_arguments() -> None:
    args = build_parser({"AIPROC_CLIENT_ID": "crawler"}).parse_args(["tasks", "list"])
    assert (args.state, args.limit, args.json, args.client_id) == (None, 100, False, "crawler")
    args = build_parser({}).parse_args(
        ["tasks", "list", "--state", "failed", "--limit", "7", "--json", "--server", "h:1"]
    )
    assert (args.state, args.limit, args.json, args.server) == ("failed", 7, True, "h:1")
    args = build_parser({}).parse_args(["tasks", "requeue", "abc", "--json"])
    assert (args.task_id, args.json) == ("abc", True)


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["tasks"], "the following arguments are required: ACTION"),
        (["tasks", "list", "--state", "done"], "argument --state: invalid choice: 'done'"),
        (["tasks", "list", "--state", "unspecified"], "invalid choice: 'unspecified'"),
        (["tasks", "list", "--limit", "0"], "argument --limit: must be at least 1, got '0'"),
        (["tasks", "list", "--limit", "x"], "argument --limit: expected a whole number"),
        (["tasks", "requeue"], "the following arguments are required: ID"),
    ],
)
def test_bad_tasks_arguments_are_one_usage_line(
    argv: list[str], complaint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser({}).parse_args(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("aiproc: error: ")
    assert complaint in err
    assert err.count("\n") == 1


def test_each_task_is_one_aligned_line_with_the_error_code_of_failed_ones() -> None:
    spec = TaskSpec(url="https://example.com/a", content="x")
    tasks = [
        TaskInfo(task_id="t-1", state=TaskState.QUEUED, spec=spec, created_at=AT),
        TaskInfo(
            task_id="t-2",
            state=TaskState.FAILED,
            spec=TaskSpec(url="https://example.com/long", content="x", priority=Priority.HIGH),
            created_at=AT,
            attempts=3,
            result=TaskResult(task_id="t-2", error=TaskError(ErrorCode.CRASHED, "died")),
        ),
        TaskInfo(
            task_id="t-3",
            state=TaskState.CANCELLED,
            spec=spec,
            attempts=1,
            result=TaskResult(task_id="t-3", error=TaskError(ErrorCode.CANCELLED, "cancelled")),
        ),
    ]
    assert render_tasks(tasks).splitlines() == [
        "t-1  queued     normal  2026-11-26T02:30:01Z  0 attempts  https://example.com/a",
        "t-2  failed     high    2026-11-26T02:30:01Z  3 attempts  https://example.com/long"
        "  crashed",
        "t-3  cancelled  normal  -                     1 attempt   https://example.com/a",
    ]
