"""What every client command shares: connection options, the client, and one-line errors."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from aiproc.client import (
    AiprocClientError,
    AsyncClient,
    AuthenticationError,
    PermissionDeniedError,
    Unavailable,
)
from aiproc.client.async_client import DEFAULT_TARGET

DEFAULT_TIMEOUT = 10.0
"""Seconds each call may take unless --timeout says otherwise."""

EXIT_FAILURE = 1
"""A call failed, or a task did."""
EXIT_USAGE = 2
"""The command line, the config or an input file is wrong."""

# What grpc core says when it never reached the server (as opposed to a server
# that answered UNAVAILABLE itself, e.g. while shutting down).
_CONNECT_FAILURES = ("failed to connect", "dns resolution failed", "connection refused")
# What grpc core says when a TLS handshake fails, and what to tell the user instead.
_TLS_FAILURES = (
    ("certificate_verify_failed", "the server's certificate is not signed by a CA we trust (--ca)"),
    ("hostname verification", "the server's certificate does not name the host in --server"),
    ("wrong_version_number", "the server does not speak TLS (drop --tls, --ca, --cert, --key)"),
    (
        "socket closed",
        "the server closed the connection: if it uses TLS, pass --ca (and --cert"
        " with --key for mutual TLS)",
    ),
)


class CliError(Exception):
    """A failure the CLI reports as one line, exiting with `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def positive_float(text: str) -> float:
    """argparse type: a number of seconds above zero."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: a whole number, zero or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {text!r}")
    return value


def connection_options(env: Mapping[str, str] = os.environ) -> argparse.ArgumentParser:
    """A parent parser with --server, --client-id, --timeout, and the credentials: --token,
    --tls, --ca, --cert and --key."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--server",
        metavar="HOST:PORT",
        default=env.get("AIPROC_SERVER") or DEFAULT_TARGET,
        help=f"the aiproc server (env AIPROC_SERVER, default {DEFAULT_TARGET})",
    )
    group.add_argument(
        "--client-id",
        metavar="ID",
        default=env.get("AIPROC_CLIENT_ID") or None,
        help="the client identity tasks belong to (env AIPROC_CLIENT_ID, default 'default')",
    )
    group.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=positive_float,
        default=None,
        help=f"deadline of each call (default {DEFAULT_TIMEOUT:g})",
    )
    group.add_argument(
        "--token",
        metavar="TOKEN",
        default=env.get("AIPROC_TOKEN") or None,
        help="API key sent as 'authorization: Bearer' (env AIPROC_TOKEN, which keeps it out"
        " of the process list)",
    )
    group.add_argument(
        "--tls",
        action="store_true",
        default=env.get("AIPROC_TLS", "").lower() in ("1", "true"),
        help="connect over TLS, trusting the system's CAs (env AIPROC_TLS=1); implied by --ca,"
        " --cert and --key",
    )
    group.add_argument(
        "--ca",
        metavar="FILE",
        default=env.get("AIPROC_CA") or None,
        help="PEM CA certificate(s) to trust for the server's certificate (env AIPROC_CA)",
    )
    group.add_argument(
        "--cert",
        metavar="FILE",
        default=env.get("AIPROC_CERT") or None,
        help="PEM client certificate, for mutual TLS; with --key (env AIPROC_CERT)",
    )
    group.add_argument(
        "--key",
        metavar="FILE",
        default=env.get("AIPROC_KEY") or None,
        help="PEM private key of --cert (env AIPROC_KEY)",
    )
    return parent


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        action="store_true",
        help="print the response in protobuf's JSON mapping",
    )


def client_from(args: argparse.Namespace) -> AsyncClient:
    """The client the connection options describe; create it inside the event loop."""
    try:
        return AsyncClient(
            args.server,
            client_id=args.client_id,
            token=args.token,
            tls=args.tls,
            ca=args.ca,
            cert=args.cert,
            key=args.key,
            timeout=args.timeout or DEFAULT_TIMEOUT,
        )
    except OSError as exc:
        raise CliError(f"cannot read {exc.filename}: {exc.strerror}") from None
    except ValueError as exc:  # e.g. --cert without --key; never repeats a token
        raise CliError(str(exc)) from None


def describe(error: AiprocClientError, server: str) -> str:
    """One line saying what went wrong with a call, for people."""
    message = error.message.lower()
    if isinstance(error, Unavailable) and (
        not message or any(part in message for part in _CONNECT_FAILURES)
    ):
        for symptom, meaning in _TLS_FAILURES:
            if symptom in message:
                return f"cannot reach server at {server}: {meaning} (UNAVAILABLE)"
        return f"cannot reach server at {server} (UNAVAILABLE)"
    if isinstance(error, AuthenticationError):
        return f"not authenticated: {error.message} (pass --token or set AIPROC_TOKEN)"
    if isinstance(error, PermissionDeniedError):
        return f"permission denied: {error.message}"
    return str(error)


def warn(message: str) -> None:
    """Prints one `aiproc: ...` line to stderr."""
    print(f"aiproc: {message}", file=sys.stderr, flush=True)
