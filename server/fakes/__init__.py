"""Fake LLM providers on real sockets, with scriptable faults, for tests, benchmarks and drills.

Dialect modules import from the submodules (`fakes.dialect`, `fakes.engine`),
not from this package, so the registry can import them while this runs.
"""

from aiproc.server.fakes.dialect import (
    Dialect,
    FakeError,
    FakeRequest,
    FakeResponse,
    FakeUsage,
    Route,
    RouteKind,
)
from aiproc.server.fakes.engine import FakeProviderServer, FakeStats
from aiproc.server.fakes.faults import (
    EchoRequest,
    EmptyBody,
    FakeReply,
    Fault,
    Garbage,
    Hang,
    HttpError,
    MalformedJson,
    Refuse,
    Reset,
    SlowBody,
    WrongContentType,
    parse_fault,
)
from aiproc.server.fakes.openai_server import FakeOpenAIServer, OpenAIDialect
from aiproc.server.fakes.phases import Phase

__all__ = [
    "Dialect",
    "EchoRequest",
    "EmptyBody",
    "FakeError",
    "FakeOpenAIServer",
    "FakeProviderServer",
    "FakeReply",
    "FakeRequest",
    "FakeResponse",
    "FakeStats",
    "FakeUsage",
    "Fault",
    "Garbage",
    "Hang",
    "HttpError",
    "MalformedJson",
    "OpenAIDialect",
    "Phase",
    "Refuse",
    "Reset",
    "Route",
    "RouteKind",
    "SlowBody",
    "WrongContentType",
    "parse_fault",
]
