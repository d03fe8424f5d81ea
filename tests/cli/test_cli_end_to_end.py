"""The `aiproc` console script against a real `aiproc serve` subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from google.protobuf import json_format

from aiproc.client import Client
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import task_pb2

pytestmark = pytest.mark.slow

AIPROC = Path(sys.executable).with_name("aiproc")
SERVE = (sys.executable, "-m", "aiproc.server.cli.main", "serve")
TEXT = "Widgets are small devices. They make work easier. Everyone likes widgets.\n"
FAST_CONFIG = """
[processor]
num_workers = 8
rate_limit_rps = 100000
rate_limit_burst = 1000
"""
FAILOVER_CONFIG = """
[processor]
rate_limit_rps = 100000
rate_limit_burst = 1000

[failover]
retry_delay = 0.01

[health]
enabled = false

[circuit_breaker]
failure_threshold = 1000

[[providers]]
name = "primary"
kind = "openai"
base_url = "http://127.0.0.1:{port}/v1"

[[providers]]
name = "offline"
kind = "offline"
priority = 2
"""
"""Every first attempt goes to a closed port, fails to connect and fails over to offline
(never skipped by an open breaker, however many tasks the test queues)."""
SERVING = re.compile(r"^aiproc: serving on (\S+:\d+)$")

StartServer = Callable[[str], str]


def clean_env() -> dict[str, str]:
    """The environment without AIPROC_* variables, so the caller's settings cannot leak in."""
    return {key: value for key, value in os.environ.items() if not key.startswith("AIPROC_")}


def read_address(proc: subprocess.Popen[str], log: Path, within: float = 20.0) -> str:
    """The address from the server's "serving on" line, failing after `within` seconds."""
    assert proc.stdout is not None
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([proc.stdout], [], [], left)
        if not ready:
            break
        line = proc.stdout.readline()
        if not line:
            pytest.fail(f"aiproc serve exited early:\n{log.read_text()}")
        if match := SERVING.match(line.strip()):
            return match.group(1)
    pytest.fail(f"aiproc serve did not announce its address within {within}s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def start_cli_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """Starts `aiproc serve` subprocesses on port 0; stops each with SIGTERM at the end."""
    running: list[tuple[subprocess.Popen[str], Path]] = []

    def start(config_text: str) -> str:
        folder = tmp_path_factory.mktemp("server")
        config = folder / "aiproc.toml"
        config.write_text(config_text, encoding="utf-8")
        log = folder / "server.log"
        with log.open("w") as log_file:
            proc = subprocess.Popen(
                [
                    *SERVE,
                    "--listen",
                    "127.0.0.1:0",
                    "--config",
                    str(config),
                    "--data-dir",
                    str(folder / "data"),
                ],
                stdout=subprocess.PIPE,
                stderr=log_file,
                text=True,
                env=clean_env(),
            )
        running.append((proc, log))
        return read_address(proc, log)

    yield start
    for proc, log in running:
        proc.terminate()
        try:
            code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            assert proc.stdout is not None
            proc.stdout.close()
        assert code == 0, f"aiproc serve exited with {code}:\n{log.read_text()}"


@pytest.fixture(scope="module")
def server(start_cli_server: StartServer) -> str:
    return start_cli_server(FAST_CONFIG)


def aiproc(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(AIPROC), *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_submit_wait_prints_the_enhanced_content(server: str, tmp_path: Path) -> None:
    page = tmp_path / "page.txt"
    page.write_text(TEXT, encoding="utf-8")
    done = aiproc("submit", "https://example.com/page", str(page), "--wait", "--server", server)
    assert done.returncode == 0, done.stderr
    assert "Offline extractive summary" in done.stdout.splitlines()[0]
    assert "https://example.com/page" in done.stdout
    assert done.stderr.count("\n") == 1
    assert "succeeded: provider offline" in done.stderr


def test_submit_json_prints_a_queue_task_response_and_get_finds_it(
    server: str, tmp_path: Path
) -> None:
    page = tmp_path / "page.txt"
    page.write_text(TEXT, encoding="utf-8")
    done = aiproc("submit", "https://example.com/j", str(page), "--json", "--server", server)
    assert done.returncode == 0, done.stderr
    response = json_format.Parse(done.stdout, pb.QueueTaskResponse())
    assert response.state == task_pb2.TASK_STATE_QUEUED
    assert not response.deduplicated
    assert json.loads(done.stdout)["taskId"] == response.task_id

    got = aiproc("get", response.task_id, "--json", "--server", server)
    assert got.returncode == 0, got.stderr
    task = json_format.Parse(got.stdout, pb.GetTaskResponse()).task
    assert task.task_id == response.task_id
    assert task.spec.url == "https://example.com/j"

    human = aiproc("get", response.task_id, "--server", server)
    assert human.returncode == 0, human.stderr
    assert human.stdout.startswith(f"task       {response.task_id}\n")


def test_submit_reads_stdin_and_wait_json_prints_the_task_result(server: str) -> None:
    done = aiproc(
        "submit",
        "https://example.com/stdin",
        "-",
        "--wait",
        "--json",
        "--metadata",
        "source=test",
        "--server",
        server,
        stdin=TEXT,
    )
    assert done.returncode == 0, done.stderr
    result = json_format.Parse(done.stdout, task_pb2.TaskResult())
    assert result.success
    assert result.state == task_pb2.TASK_STATE_SUCCEEDED
    assert result.url == "https://example.com/stdin"
    assert dict(result.metadata) == {"source": "test"}


def test_submit_batch_writes_one_result_per_line(server: str, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    lines = [
        {"url": f"https://example.com/{n}", "content": f"{TEXT} P{n}.", "metadata": {"n": str(n)}}
        for n in range(200)
    ]
    source.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    target = tmp_path / "out.jsonl"
    done = aiproc("submit-batch", str(source), str(target), "--server", server)
    assert done.returncode == 0, done.stderr
    results = [
        json_format.Parse(line, task_pb2.TaskResult())
        for line in target.read_text(encoding="utf-8").splitlines()
    ]
    assert len(results) == 200
    assert all(result.success for result in results)
    assert len({result.task_id for result in results}) == 200
    assert sorted(r.url for r in results) == sorted(f"https://example.com/{n}" for n in range(200))
    assert all(r.url == f"https://example.com/{r.metadata['n']}" for r in results)
    assert done.stderr.strip().endswith("200 succeeded, 0 failed, 0 bad")


def test_submit_batch_reports_bad_lines_and_exits_1(server: str, tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"url": "https://example.com/1", "content": "One. Two."}\n'
        "{oops\n"
        "\n"
        '{"url": "not-a-url", "content": "x"}\n'
        '{"url": "https://example.com/5", "content": "Five. Six.", "priority": "high"}\n',
        encoding="utf-8",
    )
    done = aiproc("submit-batch", str(source), "--concurrency", "2", "--server", server)
    assert done.returncode == 1
    urls = sorted(json.loads(line)["url"] for line in done.stdout.splitlines())
    assert urls == ["https://example.com/1", "https://example.com/5"]
    assert "aiproc: line 2: bad input: not valid JSON" in done.stderr
    assert "aiproc: line 4: rejected: INVALID_ARGUMENT: task.url" in done.stderr
    assert done.stderr.strip().endswith("2 succeeded, 0 failed, 2 bad")


def test_a_small_queue_is_retried_until_every_line_is_done(
    start_cli_server: StartServer, tmp_path: Path
) -> None:
    address = start_cli_server(
        "[processor]\nnum_workers = 1\nqueue_size = 3\nrate_limit_rps = 100000\n"
        "rate_limit_burst = 1000\n"
    )
    source = tmp_path / "in.jsonl"
    source.write_text(
        "".join(
            json.dumps({"url": f"https://example.com/{n}", "content": TEXT}) + "\n"
            for n in range(60)
        ),
        encoding="utf-8",
    )
    done = aiproc("submit-batch", str(source), "--concurrency", "16", "--server", address)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 60
    stats = json.loads(aiproc("stats", "--json", "--server", address).stdout)
    assert int(stats["counters"]["completed"]) == 60


def test_stats_json_and_human(server: str) -> None:
    done = aiproc("stats", "--json", "--server", server)
    assert done.returncode == 0, done.stderr
    stats = json_format.Parse(done.stdout, pb.StatsResponse())
    assert stats.queue_capacity == 1000
    assert stats.total_workers == 8
    assert stats.is_running
    assert [provider.name for provider in stats.providers] == ["offline"]
    human = aiproc("stats", "--server", server)
    assert human.returncode == 0, human.stderr
    assert "workers    " in human.stdout
    assert "of 8 busy" in human.stdout


def test_cancel_a_finished_task_reports_its_state(server: str, tmp_path: Path) -> None:
    page = tmp_path / "page.txt"
    page.write_text(TEXT, encoding="utf-8")
    done = aiproc(
        "submit", "https://example.com/c", str(page), "--wait", "--json", "--server", server
    )
    task_id = json.loads(done.stdout)["taskId"]
    cancelled = aiproc("cancel", task_id, "--json", "--server", server)
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout) == {"state": "TASK_STATE_SUCCEEDED"}
    human = aiproc("cancel", task_id, "--server", server)
    assert human.stdout == "succeeded\n"
    assert "already finished" in human.stderr


def test_an_unreachable_server_is_one_line_and_exit_1() -> None:
    address = f"127.0.0.1:{free_port()}"
    done = aiproc("stats", "--server", address, "--timeout", "5")
    assert done.returncode == 1
    assert done.stderr == f"aiproc: error: cannot reach server at {address} (UNAVAILABLE)\n"
    assert done.stdout == ""


def test_an_invalid_url_is_one_invalid_argument_line(server: str) -> None:
    done = aiproc("submit", "not-a-url", "-", "--server", server, stdin=TEXT)
    assert done.returncode == 1
    assert done.stderr.startswith("aiproc: error: INVALID_ARGUMENT: task.url")
    assert done.stderr.count("\n") == 1


def test_an_unknown_task_is_one_not_found_line(server: str) -> None:
    done = aiproc("get", "0" * 32, "--server", server)
    assert done.returncode == 1
    assert done.stderr.startswith("aiproc: error: NOT_FOUND: ")
    assert done.stderr.count("\n") == 1


def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[processor]\nnum_workers = 0\n", encoding="utf-8")
    done = aiproc("serve", "--config", str(config))
    assert done.returncode == 2
    assert done.stderr == (
        "aiproc: error: invalid config: processor.num_workers: must be at least 1\n"
    )


@pytest.fixture(scope="module")
def failover_server(start_cli_server: StartServer) -> str:
    return start_cli_server(FAILOVER_CONFIG.format(port=free_port()))


def first_line_while_queueing(
    proc: subprocess.Popen[str], client: Client, queued: list[str], within: float = 30.0
) -> str:
    """The first line `proc` prints, queueing a task each time a short wait brings none.

    Events are live only and nothing tells when `aiproc events` is watching, so a
    task queued before then fails over unseen; the next one is seen.
    """
    assert proc.stdout is not None
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        queued.append(client.queue("https://example.com/failover", TEXT).task_id)
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            return proc.stdout.readline()
    pytest.fail(f"aiproc events printed nothing within {within}s")


@contextlib.contextmanager
def interruptible(*args: str) -> Iterator[subprocess.Popen[str]]:
    """`aiproc ARGS` running with pipes, killed at the end if the test has not stopped it.

    SIGINT is made to reach it even when this test run ignores SIGINT (as background
    jobs do): a child inherits an ignored signal, but never a handler.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        proc = subprocess.Popen(
            [str(AIPROC), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
    finally:
        signal.signal(signal.SIGINT, previous)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_events_json_prints_failovers_and_get_and_stats_show_them(failover_server: str) -> None:
    queued: list[str] = []
    with interruptible("events", "--json", "--server", failover_server) as watcher:
        with Client(failover_server) as client:
            line = first_line_while_queueing(watcher, client, queued)
            for task_id in queued:
                client.wait(task_id, timeout=30)
        watcher.send_signal(signal.SIGINT)
        _, err = watcher.communicate(timeout=20)
    assert watcher.returncode == 130
    assert err == "aiproc: interrupted\n"

    event = json_format.Parse(line, pb.WatchEventsResponse()).event
    assert event.kind == pb.PROVIDER_EVENT_KIND_FAILOVER
    assert (event.provider, event.to_provider) == ("primary", "offline")
    assert event.task_id in queued
    assert event.reason

    got = aiproc("get", event.task_id, "--server", failover_server)
    assert got.returncode == 0, got.stderr
    history = got.stdout.splitlines()[-2:]
    assert history[0].startswith("history    1. primary (")
    assert "transient: " in history[0]
    assert re.fullmatch(r" {11}2\. offline \(\d+(ms|\.\d\ds)\): ok", history[1])

    stats = aiproc("stats", "--server", failover_server)
    assert stats.returncode == 0, stats.stderr
    lines = stats.stdout.splitlines()
    assert f"resilience {len(queued)} failovers, 0 rate-limit waits" in lines
    assert f"failover {len(queued)}" in next(line for line in lines if line.startswith("events "))
    assert re.search(r"primary \(openai, [^,]+, priority 1\): \w+, breaker closed", stats.stdout)


def test_submit_max_retries_reaches_the_server(server: str) -> None:
    done = aiproc(
        "submit",
        "https://example.com/r",
        "-",
        "--max-retries",
        "2",
        "--json",
        "--server",
        server,
        stdin=TEXT,
    )
    assert done.returncode == 0, done.stderr
    task_id = json.loads(done.stdout)["taskId"]
    got = aiproc("get", task_id, "--json", "--server", server)
    assert json_format.Parse(got.stdout, pb.GetTaskResponse()).task.spec.max_retries == 2
    refused = aiproc(
        "submit",
        "https://example.com/r",
        "-",
        "--max-retries",
        "21",
        "--server",
        server,
        stdin=TEXT,
    )
    assert refused.returncode == 1
    assert refused.stderr.startswith("aiproc: error: INVALID_ARGUMENT: task.max_retries")


def test_events_against_an_unreachable_server_is_one_line_and_exit_1() -> None:
    address = f"127.0.0.1:{free_port()}"
    done = aiproc("events", "--server", address)
    assert done.returncode == 1
    assert done.stderr == f"aiproc: error: cannot reach server at {address} (UNAVAILABLE)\n"
