"""Log lines as text or JSON, carrying the trace and span ids of the span they were logged in.

Only the record's own fields are written: its message, exception, and any
`extra` the caller passed. Nothing is taken from requests, so a key reaches
the logs only if a caller puts it into a message or an `extra` itself.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, TextIO

from opentelemetry import trace

__all__ = ["JsonFormatter", "TextFormatter", "configure_logging"]

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None] | tuple[None, None, None]

_HANDLER_NAME = "aiproc"
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Attributes every LogRecord has (plus the ones Formatter adds); the rest came
# from `extra=` and are written as fields of their own.
_RECORD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "trace_id",
    "span_id",
}


def configure_logging(level: str, fmt: str, *, stream: TextIO | None = None) -> None:
    """Sends every log record at `level` or above to `stream` (stderr) as "text" or "json" lines.

    Calling it again replaces the handler it installed; handlers others
    installed on the root logger are left alone. Raises ValueError for an
    unknown level or format.
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"log format must be text or json, not {fmt!r}")
    root = logging.getLogger()
    for handler in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(handler)
        handler.close()
    handler = logging.StreamHandler(sys.stderr if stream is None else stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_stamp_trace_context)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx logs every request at INFO: far too loud for a service making thousands.
    logging.getLogger("httpx").setLevel(logging.WARNING)


def _stamp_trace_context(record: logging.LogRecord) -> bool:
    # Runs in the thread that logged, so the current span is the one the line
    # belongs to, even if the record is formatted later or elsewhere.
    context = trace.get_current_span().get_span_context()
    if context.is_valid and not hasattr(record, "trace_id"):
        record.trace_id = trace.format_trace_id(context.trace_id)
        record.span_id = trace.format_span_id(context.span_id)
    return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, exception, trace ids, extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _rfc3339(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": _message(record),
        }
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        for key in ("trace_id", "span_id"):
            if isinstance(value := getattr(record, key, None), str):
                line[key] = value
        taken = _RECORD_ATTRIBUTES | line.keys()
        extras = {key: value for key, value in vars(record).items() if key not in taken}
        try:
            # An extra JSON has no type for is written as its repr.
            return json.dumps(line | extras, default=_repr)
        except ValueError:
            # An extra that refers to itself.
            return json.dumps(line | {"extras": "unencodable"})


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`, then `trace_id=… span_id=…` when logged within a span."""

    def __init__(self) -> None:
        super().__init__(_TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        try:
            return super().format(record)
        except Exception:
            # A message whose arguments do not fit its format: still write a line.
            return f"{self.formatTime(record)} {record.levelname} {record.name}: {_message(record)}"

    def formatException(self, ei: _ExcInfo) -> str:
        # exc_info=True outside an except block gives (None, None, None): no traceback to show.
        return super().formatException(ei) if ei[0] is not None else ""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        trace_id, span_id = getattr(record, "trace_id", None), getattr(record, "span_id", None)
        if isinstance(trace_id, str) and isinstance(span_id, str):
            line += f" trace_id={trace_id} span_id={span_id}"
        return line


def _message(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:
        # Arguments that do not fit the format, or a message that cannot be printed.
        return f"{_repr(record.msg)} % {_repr(record.args)}"


def _repr(value: object) -> str:
    try:
        return repr(value)
    except Exception:
        return object.__repr__(value)


def _rfc3339(timestamp: float) -> str:
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
