"""`aiproc serve` and `aiproc fake-provider`: the commands that run servers in the foreground.

Their modules are imported inside the commands, so client commands start fast.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Coroutine
from typing import Any

from aiproc.server.cli.common import EXIT_FAILURE, EXIT_USAGE, CliError


def add_parsers(commands: argparse._SubParsersAction[Any]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run the aiproc server until SIGTERM or SIGINT",
        description="Runs the aiproc server; config: the TOML file, then AIPROC_* "
        "variables, then these flags. Prints 'aiproc: serving on HOST:PORT' once listening.",
    )
    serve.add_argument("--config", metavar="FILE", help="TOML config file (env AIPROC_CONFIG)")
    serve.add_argument(
        "--listen", metavar="HOST:PORT", help="address to bind; port 0 picks a free one"
    )
    serve.add_argument("--data-dir", metavar="DIR", help="where the server keeps its files")
    serve.set_defaults(run=run_serve)

    fake = commands.add_parser(
        "fake-provider",
        help="run a fake provider API (OpenAI-compatible by default), for trying providers offline",
        description="Runs a fake LLM provider. Script outages from another process through "
        "its control API: GET /_fake/stats, POST /_fake/phase, /_fake/replies, /_fake/latency "
        "and /_fake/reset (see aiproc.server.fakes.control).",
    )
    fake.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    fake.add_argument("--port", type=int, default=8080, help="port to bind (default 8080)")
    fake.add_argument(
        "--latency",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="delay before each answer (default 0); the median with --latency-sigma",
    )
    fake.add_argument(
        "--latency-sigma",
        metavar="SIGMA",
        type=float,
        default=0.0,
        help="draw each delay from a lognormal distribution around --latency with this "
        "sigma (of its log; e.g. 0.5), seeded by --seed (default 0: a fixed delay)",
    )
    fake.add_argument(
        "--dialect", default="openai", help="which vendor's API to fake (default openai)"
    )
    fake.add_argument(
        "--fault",
        metavar="SPEC",
        help="misbehave this way, e.g. 503, 429:retry-after=2, reset, hang, slow, malformed, "
        "html, empty, echo:status=401, garbage:seed=7 (default: a 500 when --failure-rate is "
        "given)",
    )
    fake.add_argument(
        "--failure-rate",
        metavar="P",
        type=float,
        help="share of requests that get the fault, 0 to 1 (default 1 when --fault is given)",
    )
    fake.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed for --failure-rate and --latency-sigma, to replay a run (default 0)",
    )
    fake.add_argument(
        "--record",
        action="store_true",
        help="keep every request, for GET /_fake/requests (costs memory on long runs)",
    )
    fake.set_defaults(run=run_fake_provider)


def server_overrides(args: argparse.Namespace) -> dict[str, dict[str, object]]:
    """The [server] settings given as flags, and only those."""
    given = {"listen": args.listen, "data_dir": args.data_dir}
    return {"server": {key: value for key, value in given.items() if value is not None}}


def run_serve(args: argparse.Namespace) -> int:
    from aiproc.server.app import serve
    from aiproc.server.config import ConfigError, load_config
    from aiproc.server.core.errors import StoreError

    try:
        config = load_config(args.config, overrides=server_overrides(args))
    except ConfigError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    try:
        run_loop(config.server.event_loop, serve(config))
    except ConfigError as exc:  # e.g. a TLS file that cannot be read, found at start
        raise CliError(str(exc), EXIT_USAGE) from None
    except (OSError, StoreError) as exc:
        # E.g. the address is in use or not ours to bind, or the Redis store does not
        # answer: one line, not a traceback.
        raise CliError(f"cannot serve: {exc}", EXIT_FAILURE) from None
    return 0


def run_loop(event_loop: str, main: Coroutine[Any, Any, None]) -> None:
    """Runs `main` on the configured event loop (server.event_loop)."""
    if event_loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def run_fake_provider(args: argparse.Namespace) -> int:
    from aiproc.server.fakes.faults import parse_fault
    from aiproc.server.fakes.runner import run_fake_provider as run

    try:
        fault = None if args.fault is None else parse_fault(args.fault)
        serving = run(
            args.host,
            args.port,
            args.latency,
            dialect=args.dialect,
            fault=fault,
            failure_rate=args.failure_rate,
            seed=args.seed,
            record=args.record,
            latency_sigma=args.latency_sigma,
        )
        asyncio.run(serving)
    except ValueError as exc:
        # run_fake_provider checks its options before it listens.
        raise CliError(str(exc), EXIT_USAGE) from None
    except OSError as exc:
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc}", EXIT_FAILURE) from None
    return 0
