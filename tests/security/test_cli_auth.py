"""`aiproc keys` and the credential options of client commands, against `aiproc serve` with
TLS and API keys, in subprocesses."""

from __future__ import annotations

import re
import subprocess

import pytest

from tests.cli import test_cli_end_to_end as end_to_end
from tests.cli.test_cli_end_to_end import AIPROC, TEXT, StartServer, clean_env
from tests.security.support import Pki, make_pki

pytestmark = pytest.mark.slow

start_cli_server = end_to_end.start_cli_server


def aiproc(*args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AIPROC), *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean_env(), **env},
        check=False,
    )


def create_key(*args: str) -> tuple[str, str]:
    """Runs `aiproc keys create`; the token and the config entry it printed."""
    done = aiproc("keys", "create", *args)
    assert done.returncode == 0, done.stderr
    token = re.search(r"^  (aiproc_\S+)$", done.stdout, re.MULTILINE)
    entry = done.stdout[done.stdout.index("[[auth.api_keys]]") :]
    assert token, done.stdout
    assert token.group(1) not in entry  # the config gets the hash only
    return token.group(1), entry


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[str, str]]:
    return {
        "client": create_key("--tenant", "billing"),
        "admin": create_key("--tenant", "ops", "--role", "admin", "--name", "ops"),
    }


@pytest.fixture(scope="module")
def server(start_cli_server: StartServer, pki: Pki, keys: dict[str, tuple[str, str]]) -> str:
    config = (
        "[server]\nstore = 'memory'\n"
        f"tls_cert_file = '{pki.cert_file}'\ntls_key_file = '{pki.key_file}'\n"
        "[processor]\nrate_limit_rps = 10000\n" + "\n".join(entry for _, entry in keys.values())
    )
    return start_cli_server(config)


def test_a_created_key_authenticates_its_tenant_over_tls(
    server: str, pki: Pki, keys: dict[str, tuple[str, str]]
) -> None:
    token, entry = keys["client"]
    flags = ("--server", server, "--token", token, "--ca", str(pki.ca_file))
    done = aiproc("submit", "https://example.com/a", "-", "--wait", *flags, stdin=TEXT)
    assert done.returncode == 0, done.stderr
    # The same key from the environment, and the tenant's task is listed.
    env = {"AIPROC_TOKEN": token, "AIPROC_CA": str(pki.ca_file)}
    listed = aiproc("tasks", "list", "--server", server, **env)
    assert listed.returncode == 0, listed.stderr
    assert "https://example.com/a" in listed.stdout
    hashed = aiproc("keys", "hash", stdin=token + "\n")
    assert hashed.stdout.strip() in entry


def test_credential_failures_are_one_line_without_the_token(
    server: str, pki: Pki, keys: dict[str, tuple[str, str]]
) -> None:
    token, _ = keys["client"]
    ca = ("--server", server, "--ca", str(pki.ca_file))
    missing = aiproc("tasks", "list", *ca)
    wrong = aiproc("tasks", "list", *ca, "--token", token[:-4] + "AAAA")
    denied = aiproc("events", *ca, "--token", token)
    for done, line in (
        (missing, "aiproc: error: not authenticated: missing credentials: send metadata"),
        (wrong, "aiproc: error: not authenticated: invalid credentials"),
        (denied, "aiproc: error: permission denied: WatchEvents needs role admin"),
    ):
        assert done.returncode == 1
        assert done.stderr.startswith(line), done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert token[7:30] not in done.stderr + done.stdout
    admin, _ = keys["admin"]
    stats = aiproc("stats", *ca, "--token", admin, "--json")
    assert stats.returncode == 0, stats.stderr


def test_tls_mistakes_are_one_line(server: str, keys: dict[str, tuple[str, str]]) -> None:
    token, _ = keys["client"]
    untrusted = aiproc("tasks", "list", "--server", server, "--token", token, "--tls",
                       "--timeout", "1")  # fmt: skip
    assert untrusted.returncode == 1
    assert "not signed by a CA we trust (--ca)" in untrusted.stderr, untrusted.stderr
    plaintext = aiproc("tasks", "list", "--server", server, "--token", token, "--timeout", "1")
    assert plaintext.returncode == 1
    assert "if it uses TLS, pass --ca" in plaintext.stderr, plaintext.stderr
    half = aiproc("tasks", "list", "--server", server, "--cert", "c.pem")
    assert half.returncode == 2
    assert (
        half.stderr
        == "aiproc: error: cert and key go together: give both for a client certificate\n"
    )
    absent = aiproc("tasks", "list", "--server", server, "--ca", "/nonexistent/ca.pem")
    assert absent.returncode == 2
    assert absent.stderr.startswith("aiproc: error: cannot read /nonexistent/ca.pem:")


def test_keys_create_refuses_a_bad_tenant_in_one_line() -> None:
    done = aiproc("keys", "create", "--tenant", "two words")
    assert done.returncode == 2
    assert (
        done.stderr == "aiproc: error: --tenant: must be 1-128 letters, digits, '.', '_' or '-'\n"
    )
    assert done.stdout == ""
