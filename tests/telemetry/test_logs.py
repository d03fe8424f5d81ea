"""configure_logging: JSON and text lines, with the ids of the span they were logged in."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from aiproc.server.config import TelemetryConfig
from aiproc.server.telemetry.logs import JsonFormatter, TextFormatter, configure_logging
from aiproc.server.telemetry.setup import Telemetry

log = logging.getLogger("aiproc.test.logs")
Configure = Callable[[str, str], io.StringIO]


@pytest.fixture
def configure() -> Iterator[Configure]:
    """configure_logging into a fresh buffer; the root logger and httpx's level restored after."""
    root, httpx_logger = logging.getLogger(), logging.getLogger("httpx")
    handlers, level, httpx_level = list(root.handlers), root.level, httpx_logger.level

    def configure(level: str, fmt: str) -> io.StringIO:
        stream = io.StringIO()
        configure_logging(level, fmt, stream=stream)
        return stream

    yield configure
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
            handler.close()
    root.setLevel(level)
    httpx_logger.setLevel(httpx_level)


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    telemetry = Telemetry.start(TelemetryConfig(), env={}, span_exporter=InMemorySpanExporter())
    yield telemetry
    telemetry.shutdown()


def lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_time_level_logger_message_and_extras(configure: Configure) -> None:
    stream = configure("INFO", "json")

    log.info("task %s queued", "t-1", extra={"task_id": "t-1", "when": datetime(2025, 1, 2)})

    (line,) = lines(stream)
    assert line["level"] == "INFO"
    assert line["logger"] == "aiproc.test.logs"
    assert line["message"] == "task t-1 queued"
    assert line["task_id"] == "t-1"
    assert "2025" in line["when"]
    assert line["time"].endswith("Z")
    moment = datetime.fromisoformat(line["time"])
    assert moment.tzinfo is not None
    assert abs((datetime.now(UTC) - moment).total_seconds()) < 60
    assert "trace_id" not in line
    assert "exception" not in line


def test_json_lines_carry_the_ids_of_the_current_span(
    configure: Configure, telemetry: Telemetry
) -> None:
    stream = configure("INFO", "json")

    with telemetry.tracer.start_as_current_span("work") as span:
        log.info("inside")
    log.info("outside")

    inside, outside = lines(stream)
    context = span.get_span_context()
    assert inside["trace_id"] == format(context.trace_id, "032x")
    assert inside["span_id"] == format(context.span_id, "016x")
    assert "trace_id" not in outside
    assert "span_id" not in outside


def test_json_lines_carry_the_formatted_exception(configure: Configure) -> None:
    stream = configure("INFO", "json")

    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("it failed")

    (line,) = lines(stream)
    assert line["message"] == "it failed"
    assert line["exception"].startswith("Traceback")
    assert line["exception"].endswith("ValueError: boom")


def test_text_lines_add_the_span_ids_when_in_a_span(
    configure: Configure, telemetry: Telemetry
) -> None:
    stream = configure("INFO", "text")

    with telemetry.tracer.start_as_current_span("work") as span:
        try:
            raise KeyError("missing")
        except KeyError:
            log.exception("inside %d", 1)
    log.warning("outside")

    text = stream.getvalue().splitlines()
    context = span.get_span_context()
    trace_id, span_id = format(context.trace_id, "032x"), format(context.span_id, "016x")
    assert text[0].endswith(
        f" ERROR aiproc.test.logs: inside 1 trace_id={trace_id} span_id={span_id}"
    )
    assert text[1] == "Traceback (most recent call last):"
    assert text[-2] == "KeyError: 'missing'"
    assert text[-1].endswith(" WARNING aiproc.test.logs: outside")


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


def odd_records() -> list[logging.LogRecord]:
    cycle: list[Any] = []
    cycle.append(cycle)

    def record(msg: object, *args: object, **extra: Any) -> logging.LogRecord:
        no_exception = (None, None, None)
        return log.makeRecord(
            log.name, logging.INFO, "f.py", 1, msg, args, no_exception, extra=extra
        )

    return [
        record("%d tasks", "not a number"),
        record("%s and %s", "only one"),
        record(Unprintable()),
        record("cycle", cycle=cycle),
        record("unprintable", thing=Unprintable()),
        record({"a": "mapping"}),
    ]


@pytest.mark.parametrize("formatter", [JsonFormatter(), TextFormatter()], ids=["json", "text"])
def test_odd_records_are_still_written_and_never_raise(formatter: logging.Formatter) -> None:
    written = [formatter.format(record) for record in odd_records()]

    assert all("\n" not in line for line in written)
    if isinstance(formatter, JsonFormatter):
        parsed = [json.loads(line) for line in written]
        assert parsed[0]["message"] == "'%d tasks' % ('not a number',)"
        assert "Unprintable object" in parsed[2]["message"]
        assert parsed[3]["message"] == "cycle"
        assert "Unprintable object" in parsed[4]["thing"]
        assert "exception" not in parsed[5]
    else:
        assert written[0].endswith(" INFO aiproc.test.logs: '%d tasks' % ('not a number',)")
        assert written[5].endswith(" INFO aiproc.test.logs: {'a': 'mapping'}")


def test_the_level_applies_and_httpx_stays_at_warning(configure: Configure) -> None:
    warning = configure("WARNING", "text")
    log.info("dropped")
    log.warning("kept")
    debug = configure("DEBUG", "text")
    logging.getLogger("httpx").info("HTTP Request: GET ... 200 OK")
    log.debug("debug kept")

    assert warning.getvalue().endswith(" WARNING aiproc.test.logs: kept\n")
    assert warning.getvalue().count("\n") == 1
    assert debug.getvalue().endswith(" DEBUG aiproc.test.logs: debug kept\n")
    assert debug.getvalue().count("\n") == 1


def test_configuring_again_replaces_only_its_own_handler(configure: Configure) -> None:
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    first = configure("INFO", "text")
    second = configure("INFO", "json")

    log.info("once")

    assert first.getvalue() == ""
    assert [line["message"] for line in lines(second)] == ["once"]
    assert other in logging.getLogger().handlers
