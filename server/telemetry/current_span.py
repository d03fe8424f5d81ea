"""A started span made the current one for a `with` block, then ended.

What `Tracer.start_as_current_span(..., record_exception=False,
set_status_on_exception=False)` does, without its two generator-based context
managers (the API's and `use_span`): those cost about a fifth of making a span,
and the server makes three such spans per task.
"""

from __future__ import annotations

from contextvars import Token
from types import TracebackType

from opentelemetry import context
from opentelemetry.context import Context
from opentelemetry.trace import Span, set_span_in_context

__all__ = ["CurrentSpan"]


class CurrentSpan:
    """`with CurrentSpan(tracer.start_span(...)) as span:` makes `span` current inside
    the block, and on the way out restores the previous context and ends the span.

    An exception leaving the block is neither recorded on the span nor turns its
    status to error: callers set the status they mean.
    """

    __slots__ = ("_span", "_token")

    def __init__(self, span: Span) -> None:
        self._span = span
        self._token: Token[Context] | None = None

    def __enter__(self) -> Span:
        self._token = context.attach(set_span_in_context(self._span))
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        assert self._token is not None, "exited without entering"
        # The order of use_span: the context first, then the span.
        context.detach(self._token)
        self._span.end()
