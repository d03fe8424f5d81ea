"""The committed Python stubs in gen/python match what gen/generate.py makes from protos/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from aiproc.v1 import processor_service_pb2, processor_service_pb2_grpc

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "gen" / "python"
STUB_DIR = Path("aiproc") / "v1"
STALE = "stubs are stale: run `make protos`"

SERVICE_METHODS = {
    # name: (client streaming, server streaming)
    "QueueTask": (False, False),
    "StreamResults": (True, True),
    "Stats": (False, False),
    "GetTask": (False, False),
    "CancelTask": (False, False),
    "WatchEvents": (False, True),
    "ListTasks": (False, False),
    "RequeueTask": (False, False),
}


def _relative_files(root: Path) -> set[Path]:
    return {
        p.relative_to(root) for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts
    }


@pytest.mark.slow
def test_committed_stubs_match_generated(tmp_path: Path) -> None:
    out = tmp_path / "gen"
    proc = subprocess.run(
        [sys.executable, "gen/generate.py", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, f"gen/generate.py failed:\n{proc.stdout}\n{proc.stderr}"

    generated = _relative_files(out)
    assert generated, "gen/generate.py wrote no files"

    missing = sorted(str(p) for p in generated if not (COMMITTED / p).is_file())
    assert not missing, f"{STALE} (not committed: {', '.join(missing)})"

    differing = sorted(
        str(p) for p in generated if (out / p).read_bytes() != (COMMITTED / p).read_bytes()
    )
    assert not differing, f"{STALE} (differ: {', '.join(differing)})"

    committed_stubs = {p for p in _relative_files(COMMITTED / STUB_DIR) if "_pb2" in p.name}
    orphans = sorted(str(STUB_DIR / p) for p in committed_stubs if STUB_DIR / p not in generated)
    assert not orphans, f"{STALE} (no longer generated: {', '.join(orphans)})"


def test_service_has_every_rpc() -> None:
    service = processor_service_pb2.DESCRIPTOR.services_by_name["ProcessorService"]
    shapes = {
        m.name: (m.client_streaming, m.server_streaming) for m in service.methods_by_name.values()
    }
    assert shapes == SERVICE_METHODS

    servicer = processor_service_pb2_grpc.ProcessorServiceServicer
    for name in SERVICE_METHODS:
        assert callable(getattr(servicer, name, None)), f"servicer lacks {name}"

    # The stub binds one callable per rpc; building it opens no connection.
    channel = grpc.insecure_channel("127.0.0.1:1")
    try:
        stub = processor_service_pb2_grpc.ProcessorServiceStub(channel)
        for name in SERVICE_METHODS:
            assert callable(getattr(stub, name, None)), f"stub lacks {name}"
    finally:
        channel.close()
