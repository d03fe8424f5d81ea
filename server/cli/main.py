"""The `aiproc` command: builds the parser, runs one command, turns failures into one line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from typing import NoReturn

from aiproc.client import AiprocClientError
from aiproc.server.cli import batch, events, info, keys, serve, submit, tasks
from aiproc.server.cli.common import EXIT_FAILURE, EXIT_USAGE, CliError, describe

EXIT_INTERRUPTED = 130


class _Parser(argparse.ArgumentParser):
    """Reports usage errors as one line and exit status 2, like every other error."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"aiproc: error: {message} (see '{self.prog} --help')\n")


def build_parser(env: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    """The parser of every command; `env` supplies AIPROC_SERVER and AIPROC_CLIENT_ID."""
    parser = _Parser(
        prog="aiproc",
        description="Background LLM enhancement of web content over gRPC.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve.add_parsers(commands)
    submit.add_parser(commands, env)
    batch.add_parser(commands, env)
    info.add_parsers(commands, env)
    tasks.add_parser(commands, env)
    events.add_parser(commands, env)
    keys.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line `argv` (default sys.argv[1:]) and returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.run(args)
    except CliError as exc:
        print(f"aiproc: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except AiprocClientError as exc:
        print(f"aiproc: error: {describe(exc, getattr(args, 'server', ''))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("aiproc: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader of stdout went away (e.g. `| head`); stop quietly, and keep
        # Python's final flush from failing again on the dead pipe.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILURE
    return status


if __name__ == "__main__":
    sys.exit(main())
