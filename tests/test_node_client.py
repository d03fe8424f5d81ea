"""The polyglot proof: examples/node/queue-and-wait.js against a real aiproc server.

The server runs in this process (on this test's event loop) while node runs as
an asyncio subprocess, so the server keeps serving while the test waits.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from aiproc.server.app import AiprocServer
from aiproc.server.config import load_config
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import processor_service_pb2_grpc as pb_grpc
from aiproc.v1 import task_pb2

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "node"
SCRIPT = EXAMPLE / "queue-and-wait.js"
NODE = shutil.which("node")
CLIENT_ID = "node-example"
NODE_TIMEOUT = 45.0  # seconds; the script's own per-call deadline is 30 s

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NODE is None, reason="node is not installed"),
]

CONTENT = (
    "Background processing lets a crawler hand pages to a model without waiting.\n"
    "Each page is queued with a priority and processed by a pool of workers.\n"
    "Results stream back to the caller, who acknowledges them once stored.\n"
)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[AiprocServer]:
    config = load_config(
        env={},
        overrides={"server": {"listen": "127.0.0.1:0", "data_dir": str(tmp_path / "data")}},
    )
    running = await AiprocServer.start(config)
    try:
        yield running
    finally:
        await running.stop(grace=1.0)


def _require_node_modules() -> None:
    for package in ("@grpc/grpc-js", "@grpc/proto-loader"):
        if not (EXAMPLE / "node_modules" / package / "package.json").is_file():
            pytest.fail(
                f"examples/node/node_modules lacks {package}: run `make node-deps` "
                "(the Makefile's test target does it first)"
            )


async def _run_node(*args: str) -> tuple[int, str, str]:
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE,
        str(SCRIPT),
        *args,
        cwd=EXAMPLE,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), NODE_TIMEOUT)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"node {SCRIPT.name} did not finish within {NODE_TIMEOUT} s")
    assert proc.returncode is not None
    return proc.returncode, stdout.decode(), stderr.decode()


def _enum_name(value: Any, enum: Any) -> str:
    """proto-loader renders enums by name (enums: String); accept a number too."""
    return str(enum.Name(value)) if isinstance(value, int) else str(value)


async def test_node_client_queues_and_receives_result(server: AiprocServer, tmp_path: Path) -> None:
    _require_node_modules()
    content_file = tmp_path / "page.txt"
    content_file.write_text(CONTENT, encoding="utf-8")
    url = "https://example.com/a"

    code, stdout, stderr = await _run_node(
        "--server",
        server.address,
        "--url",
        url,
        "--content-file",
        str(content_file),
        "--client-id",
        CLIENT_ID,
        "--priority",
        "PRIORITY_HIGH",
    )

    assert code == 0, f"node exited {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert stderr == ""
    lines = stdout.splitlines()
    assert len(lines) == 1, f"expected one line of JSON, got: {stdout!r}"
    result = json.loads(lines[0])

    task_id = result.get("taskId", result.get("task_id"))
    enhanced = result.get("enhancedContent", result.get("enhanced_content"))
    assert isinstance(task_id, str)
    assert task_id
    assert result["success"] is True
    assert _enum_name(result["state"], task_pb2.TaskState) == "TASK_STATE_SUCCEEDED"
    assert result["url"] == url
    assert isinstance(enhanced, str)
    assert enhanced.strip()
    assert "Offline extractive summary" in enhanced.splitlines()[0]

    # The server agrees: that id is a task the node client queued, under its
    # client identity and priority, and its result was acknowledged.
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = pb_grpc.ProcessorServiceStub(channel)
        metadata = (("aiproc-client-id", CLIENT_ID),)
        got = await stub.GetTask(pb.GetTaskRequest(task_id=task_id), metadata=metadata, timeout=10)
        stats = await stub.Stats(pb.StatsRequest(), timeout=10)

    assert got.task.task_id == task_id
    assert got.task.state == task_pb2.TASK_STATE_SUCCEEDED
    assert got.task.spec.url == url
    assert got.task.spec.content == CONTENT
    assert got.task.spec.priority == task_pb2.PRIORITY_HIGH
    assert got.task.result.enhanced_content == enhanced
    assert stats.counters.queued == 1
    assert stats.counters.completed == 1
    assert stats.undelivered_results == 0, "the node client's Ack did not reach the server"


async def test_node_client_reports_rpc_errors(server: AiprocServer, tmp_path: Path) -> None:
    """A refused QueueTask (here: a relative URL) is one line on stderr and exit status 2."""
    _require_node_modules()
    content_file = tmp_path / "page.txt"
    content_file.write_text(CONTENT, encoding="utf-8")

    code, stdout, stderr = await _run_node(
        "--server", server.address, "--url", "not-a-url", "--content-file", str(content_file)
    )

    assert code == 2, f"node exited {code}\nstdout: {stdout}\nstderr: {stderr}"
    assert stdout == ""
    assert len(stderr.splitlines()) == 1
    assert "INVALID_ARGUMENT" in stderr
