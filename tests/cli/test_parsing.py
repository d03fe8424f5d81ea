"""The command line without a server: arguments, environment defaults, usage errors, helpers."""

from __future__ import annotations

import io

import grpc
import pytest

from aiproc.client import DeadlineExceeded, InvalidArgument, Unavailable
from aiproc.server.cli.common import CliError, describe
from aiproc.server.cli.main import build_parser, main
from aiproc.server.cli.serve import server_overrides
from aiproc.server.cli.submit import parse_metadata, read_content


def test_client_options_default_from_the_environment() -> None:
    env = {"AIPROC_SERVER": "10.0.0.1:7000", "AIPROC_CLIENT_ID": "crawler"}
    args = build_parser(env).parse_args(["stats"])
    assert (args.server, args.client_id, args.timeout, args.json) == (
        "10.0.0.1:7000",
        "crawler",
        None,
        False,
    )
    args = build_parser(env).parse_args(["stats", "--server", "h:1", "--client-id", "x"])
    assert (args.server, args.client_id) == ("h:1", "x")
    args = build_parser({}).parse_args(["get", "abc", "--json", "--timeout", "2.5"])
    assert (args.server, args.client_id, args.task_id, args.timeout, args.json) == (
        "127.0.0.1:50051",
        None,
        "abc",
        2.5,
        True,
    )


def test_submit_arguments() -> None:
    args = build_parser({}).parse_args(
        [
            "submit",
            "https://example.com/a",
            "page.txt",
            "--priority",
            "critical",
            "--task-timeout",
            "30",
            "--metadata",
            "a=1",
            "b=x=y",
            "--metadata",
            "c=",
            "--idempotency-key",
            "k",
            "--max-retries",
            "0",
            "--wait",
        ]
    )
    assert args.url == "https://example.com/a"
    assert args.file == "page.txt"
    assert args.priority == "critical"
    assert args.task_timeout == 30.0
    assert parse_metadata(args.metadata) == {"a": "1", "b": "x=y", "c": ""}
    assert args.idempotency_key == "k"
    assert args.max_retries == 0
    assert args.wait
    assert not args.json
    assert build_parser({}).parse_args(["submit", "https://e.com"]).max_retries is None


def test_submit_batch_arguments() -> None:
    args = build_parser({}).parse_args(["submit-batch", "in.jsonl", "out.jsonl"])
    assert (args.input, args.output, args.concurrency) == ("in.jsonl", "out.jsonl", 64)
    args = build_parser({}).parse_args(["submit-batch", "in.jsonl", "--concurrency", "8"])
    assert (args.output, args.concurrency) == (None, 8)


def test_serve_overrides_only_the_flags_given() -> None:
    parser = build_parser({})
    assert server_overrides(parser.parse_args(["serve"])) == {"server": {}}
    args = parser.parse_args(["serve", "--listen", "127.0.0.1:0", "--config", "a.toml"])
    assert server_overrides(args) == {"server": {"listen": "127.0.0.1:0"}}
    args = parser.parse_args(["serve", "--data-dir", "/tmp/d"])
    assert server_overrides(args) == {"server": {"data_dir": "/tmp/d"}}


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        ([], "the following arguments are required: COMMAND"),
        (["submit"], "the following arguments are required: URL"),
        (["submit", "https://e.com", "--priority", "urgent"], "invalid choice: 'urgent'"),
        (["submit", "https://e.com", "--max-retries", "-1"], "must not be negative"),
        (["submit", "https://e.com", "--max-retries", "two"], "expected a whole number"),
        (["stats", "--timeout", "0"], "must be positive"),
        (["submit-batch", "in.jsonl", "--concurrency", "0"], "must be at least 1"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(
    argv: list[str], fragment: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("aiproc: error: ")
    assert fragment in err


def test_bad_metadata_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "https://e.com/a", "-", "--metadata", "novalue"]) == 2
    assert capsys.readouterr().err == (
        "aiproc: error: --metadata: expected KEY=VALUE, got 'novalue'\n"
    )


def test_a_missing_content_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "https://e.com/a", "/nonexistent/page.txt"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("aiproc: error: cannot read /nonexistent/page.txt:")
    assert err.count("\n") == 1


def test_a_missing_config_file_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--config", "/nonexistent/aiproc.toml"]) == 2
    err = capsys.readouterr().err
    assert (
        err == "aiproc: error: invalid config: config: file not found: /nonexistent/aiproc.toml\n"
    )


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_read_content_from_stdin_or_a_file(tmp_path: pytest.TempPathFactory) -> None:
    assert read_content("-", io.StringIO("piped")) == "piped"
    assert read_content(None, io.StringIO("piped")) == "piped"
    with pytest.raises(CliError, match="no content"):
        read_content(None, _Terminal())
    page = tmp_path / "page.txt"  # type: ignore[operator]
    page.write_text("from a file", encoding="utf-8")
    assert read_content(str(page), _Terminal()) == "from a file"


def test_error_lines_for_people() -> None:
    server = "127.0.0.1:50051"
    refused = Unavailable(
        grpc.StatusCode.UNAVAILABLE,
        "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:50051: "
        "Failed to connect to remote host: Connection refused",
    )
    assert describe(refused, server) == "cannot reach server at 127.0.0.1:50051 (UNAVAILABLE)"
    shutting = Unavailable(grpc.StatusCode.UNAVAILABLE, "the server is shutting down")
    assert describe(shutting, server) == "UNAVAILABLE: the server is shutting down"
    invalid = InvalidArgument(
        grpc.StatusCode.INVALID_ARGUMENT, "task.url: must be an absolute http(s) URL"
    )
    assert (
        describe(invalid, server) == "INVALID_ARGUMENT: task.url: must be an absolute http(s) URL"
    )
    late = DeadlineExceeded(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
    assert describe(late, server) == "DEADLINE_EXCEEDED: Deadline Exceeded"
