"""`aiproc keys create` and `aiproc keys hash`: API keys for the server's [auth] section.

Neither talks to a server: a key is a random token the caller keeps, and the config
entry it prints holds only the token's hash, so the config file is no secret.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from aiproc.server.cli.common import CliError, add_json_flag

ROLES = ("client", "admin")


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    group = commands.add_parser(
        "keys",
        help="create API keys for the server's [auth] section",
        description="API keys: the caller keeps the token, the server's config keeps its hash.",
    )
    actions = group.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    create = actions.add_parser(
        "create",
        help="make a new key: prints the token once, and the config entry to paste",
        description="Prints a new random token (shown only this once: store it now) and the "
        "[[auth.api_keys]] entry to add to the server's config, which holds only its hash.",
    )
    create.add_argument("--tenant", required=True, help="the client identity the key acts as")
    create.add_argument(
        "--role",
        choices=ROLES,
        default="client",
        help="client: its tenant's tasks; admin: also Stats, WatchEvents and any tenant "
        "(default client)",
    )
    create.add_argument(
        "--name", help="a label for logs and revoking (default: TENANT-ROLE-<hash prefix>)"
    )
    add_json_flag(create)
    create.set_defaults(run=run_create)
    hashing = actions.add_parser(
        "hash",
        help="print the config hash of a token read from stdin",
        description="Reads a token from stdin (one line) and prints its 'sha256:...' hash, "
        'e.g. to check an entry: echo "$AIPROC_TOKEN" | aiproc keys hash',
    )
    hashing.set_defaults(run=run_hash)


def run_create(args: argparse.Namespace) -> int:
    from aiproc.server.config import ApiKeyConfig, ConfigError, validate_api_key
    from aiproc.server.security.tokens import hash_token, new_token

    token = new_token()
    digest = hash_token(token)
    prefix = args.tenant.lstrip("._-")[:40] or "key"  # a name starts alphanumeric
    name = args.name or f"{prefix}-{args.role}-{digest.partition(':')[2][:8]}"
    entry = ApiKeyConfig(name=name, tenant=args.tenant, role=args.role, hash=digest)
    try:
        validate_api_key(entry, "key")
    except ConfigError as exc:
        option = exc.field.rpartition(".")[2]
        raise CliError(f"--{option}: {exc.reason}") from None
    if args.json:
        fields = {"token": token, "name": name, "tenant": entry.tenant, "role": entry.role}
        print(json.dumps({**fields, "hash": digest}, indent=2))
        return 0
    # Every value was validated above: none holds a quote or a backslash.
    print("token (shown only now: store it as a secret; the server keeps only its hash):")
    print(f"  {token}")
    print()
    print("add to the server's config file:")
    print()
    print("[[auth.api_keys]]")
    for field in ("name", "tenant", "role", "hash"):
        print(f'{field} = "{getattr(entry, field)}"')
    return 0


def run_hash(args: argparse.Namespace) -> int:
    from aiproc.server.security.tokens import hash_token

    token = sys.stdin.readline().strip()
    if not token:
        raise CliError("no token on stdin")
    print(hash_token(token))
    return 0
