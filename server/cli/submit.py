"""`aiproc submit`: queue one piece of content and, with --wait, print its result."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

from aiproc.client import AsyncClient, Priority, QueuedTask, TaskResult, to_json
from aiproc.server.cli.common import (
    EXIT_FAILURE,
    CliError,
    add_json_flag,
    client_from,
    connection_options,
    non_negative_int,
    positive_float,
    warn,
)

DEFAULT_WAIT = 300.0
"""Seconds --wait waits for the result unless --timeout says otherwise."""


def add_parser(commands: argparse._SubParsersAction[Any], env: Mapping[str, str]) -> None:
    parser = commands.add_parser(
        "submit",
        parents=[connection_options(env)],
        help="queue one piece of content for enhancement",
        description="Queues the content of FILE (or stdin) for URL and prints the task id; "
        "with --wait, the enhanced content once the task is done.",
    )
    parser.add_argument("url", metavar="URL", help="the address the content came from")
    parser.add_argument(
        "file",
        metavar="FILE",
        nargs="?",
        help="the content; '-' or omitted reads stdin (when it is not a terminal)",
    )
    parser.add_argument(
        "--priority", choices=[p.value for p in Priority], default=Priority.NORMAL.value
    )
    parser.add_argument(
        "--task-timeout",
        metavar="SECONDS",
        type=positive_float,
        help="bound on the task's processing time (default: the server's worker_timeout)",
    )
    parser.add_argument(
        "--max-retries",
        metavar="N",
        type=non_negative_int,
        help="retries after retryable provider errors, at most 20 "
        "(default: the server's processor.max_retries)",
    )
    parser.add_argument("--instructions", default="", help="replaces the default system prompt")
    parser.add_argument("--model", default="", help="the model to ask for")
    parser.add_argument("--idempotency-key", metavar="KEY", default="")
    parser.add_argument(
        "--metadata",
        metavar="KEY=VALUE",
        nargs="+",
        action="extend",
        default=[],
        help="caller data echoed on the result; repeatable",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help=f"wait for the result (up to --timeout, default {DEFAULT_WAIT:g}s) and print it",
    )
    add_json_flag(parser)
    parser.set_defaults(run=run)


def parse_metadata(pairs: Iterable[str]) -> dict[str, str]:
    """KEY=VALUE strings as a dict; a pair without '=' or with an empty key is a usage error."""
    metadata: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CliError(f"--metadata: expected KEY=VALUE, got {pair!r}")
        metadata[key] = value
    return metadata


def read_content(file: str | None, stdin: TextIO) -> str:
    """The content from FILE, or from stdin for '-' or no FILE with a piped stdin."""
    if file is None and stdin.isatty():
        raise CliError("no content: give a FILE, or pipe it on stdin")
    try:
        if file is None or file == "-":
            return stdin.read()
        return Path(file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"cannot read {file or 'stdin'}: {exc}") from None


def result_summary(result: TaskResult) -> str:
    """One line of who produced a result and how long it took."""
    return (
        f"task {result.task_id} {result.state}: provider {result.provider or '-'}, "
        f"model {result.model or '-'}, {result.attempts} attempt(s), "
        f"tokens {result.usage.input_tokens} in / {result.usage.output_tokens} out, "
        f"queued {result.queue_time:.3f}s, processed {result.processing_time:.3f}s"
    )


def failure_line(result: TaskResult) -> str:
    """Why a task did not succeed, in one line."""
    if result.error is None:
        return f"task {result.task_id} {result.state}"
    return f"task {result.task_id} {result.state}: {result.error.code}: {result.error.message}"


async def finished_result(client: AsyncClient, queued: QueuedTask) -> TaskResult:
    """The result of a task QueueTask reported already terminal (a deduplicated repeat).

    Read with GetTask, since its result may have been acknowledged already and
    would then never arrive on a stream.
    """
    info = await client.get(queued.task_id)
    if info.result is None:
        raise CliError(f"task {queued.task_id} is {info.state} but has no result", EXIT_FAILURE)
    return info.result


def run(args: argparse.Namespace) -> int:
    metadata = parse_metadata(args.metadata)
    content = read_content(args.file, sys.stdin)
    return asyncio.run(_submit(args, content, metadata))


async def _submit(args: argparse.Namespace, content: str, metadata: dict[str, str]) -> int:
    async with client_from(args) as client:
        queued = await client.queue(
            args.url,
            content,
            priority=args.priority,
            task_timeout=args.task_timeout,
            instructions=args.instructions,
            model=args.model,
            idempotency_key=args.idempotency_key,
            metadata=metadata,
            max_retries=args.max_retries,
        )
        if queued.deduplicated:
            warn(f"deduplicated: task {queued.task_id} already had that idempotency key")
        if not args.wait:
            print(to_json(queued) if args.json else queued.task_id)
            return 0
        if queued.deduplicated and queued.state.is_terminal:
            result = await finished_result(client, queued)
        else:
            result = await client.wait(queued.task_id, timeout=args.timeout or DEFAULT_WAIT)
    return _print_result(result, as_json=args.json)


def _print_result(result: TaskResult, *, as_json: bool) -> int:
    if as_json:
        print(to_json(result))
    elif result.success:
        content = result.enhanced_content
        sys.stdout.write(content if content.endswith("\n") else content + "\n")
        sys.stdout.flush()
    if not result.success:
        print(f"aiproc: error: {failure_line(result)}", file=sys.stderr)
        return EXIT_FAILURE
    if not as_json:
        warn(result_summary(result))
    return 0
