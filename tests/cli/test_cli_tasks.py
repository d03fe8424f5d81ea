"""`aiproc tasks list` and `aiproc tasks requeue` against a real `aiproc serve` subprocess."""

from __future__ import annotations

import json

import pytest
from google.protobuf import json_format

from aiproc.client import Client
from aiproc.v1 import processor_service_pb2 as pb
from aiproc.v1 import task_pb2
from tests.cli import test_cli_end_to_end as end_to_end
from tests.cli.test_cli_end_to_end import FAST_CONFIG, TEXT, StartServer, aiproc

pytestmark = pytest.mark.slow

# The end-to-end module's fixture, shared: it starts `aiproc serve` subprocesses on
# port 0 and stops them with SIGTERM, checking each exits 0.
start_cli_server = end_to_end.start_cli_server


@pytest.fixture(scope="module")
def server(start_cli_server: StartServer) -> str:
    return start_cli_server(FAST_CONFIG)


def queue_and_finish(server: str, client_id: str, count: int) -> list[str]:
    """Queues `count` tasks one after the other and waits for each; their ids, oldest first."""
    ids = []
    with Client(server, client_id=client_id) as client:
        for n in range(count):
            task_id = client.queue(f"https://example.com/{client_id}/{n}", TEXT).task_id
            assert client.wait(task_id, timeout=30).success
            ids.append(task_id)
    return ids


def test_tasks_list_json_prints_a_list_tasks_response(server: str) -> None:
    ids = queue_and_finish(server, "lister", 3)
    done = aiproc("tasks", "list", "--json", "--client-id", "lister", "--server", server)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    response = json_format.Parse(done.stdout, pb.ListTasksResponse())
    assert [task.task_id for task in response.tasks] == ids
    assert [task.spec.url for task in response.tasks] == [
        f"https://example.com/lister/{n}" for n in range(3)
    ]
    assert all(task.state == task_pb2.TASK_STATE_SUCCEEDED for task in response.tasks)
    assert all(task.result.success for task in response.tasks)

    limited = aiproc(
        "tasks", "list", "--json", "--limit", "2", "--client-id", "lister", "--server", server
    )
    assert limited.returncode == 0, limited.stderr
    first_two = json_format.Parse(limited.stdout, pb.ListTasksResponse())
    assert [task.task_id for task in first_two.tasks] == ids[:2]
    assert limited.stderr == "aiproc: showing the oldest 2 tasks; there may be more (see --limit)\n"

    running = aiproc(
        "tasks", "list", "--json", "--state", "running", "--client-id", "lister", "--server", server
    )
    assert running.returncode == 0, running.stderr
    assert json.loads(running.stdout) == {"tasks": []}

    stranger = aiproc("tasks", "list", "--json", "--client-id", "stranger", "--server", server)
    assert stranger.returncode == 0, stranger.stderr
    assert json.loads(stranger.stdout) == {"tasks": []}


def test_tasks_list_prints_one_line_per_task(server: str) -> None:
    ids = queue_and_finish(server, "human", 2)
    done = aiproc(
        "tasks", "list", "--state", "succeeded", "--client-id", "human", "--server", server
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ids
    assert all(line.split()[1:3] == ["succeeded", "normal"] for line in lines)
    assert [line.split()[-1] for line in lines] == [
        f"https://example.com/human/{n}" for n in range(2)
    ]
    nothing = aiproc("tasks", "list", "--client-id", "nobody", "--server", server)
    assert (nothing.returncode, nothing.stdout, nothing.stderr) == (0, "", "")


def test_tasks_requeue_runs_a_finished_task_again(server: str) -> None:
    [task_id] = queue_and_finish(server, "requeuer", 1)
    done = aiproc(
        "tasks", "requeue", task_id, "--json", "--client-id", "requeuer", "--server", server
    )
    assert done.returncode == 0, done.stderr
    response = json_format.Parse(done.stdout, pb.RequeueTaskResponse())
    assert response.state == task_pb2.TASK_STATE_QUEUED
    with Client(server, client_id="requeuer") as client:
        again = client.wait(task_id, timeout=30)
    assert again.success
    assert again.task_id == task_id

    human = aiproc("tasks", "requeue", task_id, "--client-id", "requeuer", "--server", server)
    assert human.returncode == 0, human.stderr
    assert human.stdout == "queued\n"
    with Client(server, client_id="requeuer") as client:
        assert client.wait(task_id, timeout=30).success


def test_tasks_requeue_of_an_unknown_task_is_one_not_found_line(server: str) -> None:
    done = aiproc("tasks", "requeue", "0" * 32, "--server", server)
    assert done.returncode == 1
    assert done.stderr.startswith("aiproc: error: NOT_FOUND: ")
    assert done.stderr.count("\n") == 1
    assert done.stdout == ""
