"""The ways a fake provider can misbehave, and a one-line spelling of each for CLIs and JSON.

Spelling (`parse_fault`, and each fault's `spec`):

    500, 502, 503, 504, 529 ...      that status with the dialect's error body
    429:retry-after=2                ... plus Retry-After: 2 (seconds)
    429:retry-after-ms=300           ... plus retry-after-ms: 300
    reset                            abort the connection without answering
    refuse                           stop listening (a phase's worth; see Phase)
    hang                             accept, then never answer
    slow:chunk=16,delay=0.01         a 200 whose body trickles in, chunk by chunk
    malformed                        a 200 whose JSON body is cut in half
    html                             a 200 text/html page instead of JSON
    empty                            a 200 with no body
    echo:status=401                  that status, its body echoing the request's headers (keys too)
    garbage:seed=7                   random garbage, drawn per request (see `fakes.garbage`)
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeAlias

__all__ = [
    "EchoRequest",
    "EmptyBody",
    "FakeReply",
    "Fault",
    "Garbage",
    "Hang",
    "HttpError",
    "MalformedJson",
    "Refuse",
    "Reset",
    "SlowBody",
    "WrongContentType",
    "parse_fault",
]


@dataclass(frozen=True, slots=True)
class HttpError:
    """An error status with the dialect's error body, and optionally a retry hint."""

    status: int
    retry_after: float | None = None
    """Seconds, sent as Retry-After; None sends none."""
    retry_after_ms: int | None = None
    """Milliseconds, sent as retry-after-ms (OpenAI's and Azure's finer hint); None sends none."""

    def __post_init__(self) -> None:
        if not 400 <= self.status <= 599:
            raise ValueError(f"an HTTP error status is 400-599, not {self.status}")
        if self.retry_after is not None and self.retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        if self.retry_after_ms is not None and self.retry_after_ms < 0:
            raise ValueError("retry_after_ms must be >= 0")

    @property
    def name(self) -> str:
        return str(self.status)

    @property
    def spec(self) -> str:
        options = []
        if self.retry_after is not None:
            options.append(f"retry-after={self.retry_after:g}")
        if self.retry_after_ms is not None:
            options.append(f"retry-after-ms={self.retry_after_ms}")
        return self.name + (":" + ",".join(options) if options else "")

    def headers(self) -> dict[str, str]:
        """The retry hints as response headers."""
        headers = {}
        if self.retry_after is not None:
            headers["Retry-After"] = f"{self.retry_after:g}"
        if self.retry_after_ms is not None:
            headers["retry-after-ms"] = str(self.retry_after_ms)
        return headers


@dataclass(frozen=True, slots=True)
class Reset:
    """Aborts the connection once the request is read: the client sees a reset, no answer."""

    name: ClassVar[str] = "reset"
    spec: ClassVar[str] = "reset"


@dataclass(frozen=True, slots=True)
class Refuse:
    """Stops listening for as long as its phase lasts; new connections are refused."""

    name: ClassVar[str] = "refuse"
    spec: ClassVar[str] = "refuse"


@dataclass(frozen=True, slots=True)
class Hang:
    """Accepts the request and never answers, until the client gives up or the fake stops."""

    name: ClassVar[str] = "hang"
    spec: ClassVar[str] = "hang"


@dataclass(frozen=True, slots=True)
class SlowBody:
    """Sends the headers of a normal answer at once, then its body `chunk` bytes at a time."""

    chunk: int = 16
    """Bytes per write. Default 16."""
    delay: float = 0.01
    """Seconds between writes. Default 0.01."""

    name: ClassVar[str] = "slow"

    def __post_init__(self) -> None:
        if self.chunk < 1:
            raise ValueError("a slow body's chunk must be >= 1 byte")
        if self.delay < 0:
            raise ValueError("a slow body's delay must be >= 0")

    @property
    def spec(self) -> str:
        return f"slow:chunk={self.chunk},delay={self.delay:g}"


@dataclass(frozen=True, slots=True)
class MalformedJson:
    """A 200 declared as JSON whose body is the first half of a normal answer."""

    name: ClassVar[str] = "malformed"
    spec: ClassVar[str] = "malformed"


@dataclass(frozen=True, slots=True)
class WrongContentType:
    """A 200 text/html page, as a captive portal or a misrouted proxy answers."""

    name: ClassVar[str] = "html"
    spec: ClassVar[str] = "html"


@dataclass(frozen=True, slots=True)
class EmptyBody:
    """A 200 declared as JSON with no body at all."""

    name: ClassVar[str] = "empty"
    spec: ClassVar[str] = "empty"


@dataclass(frozen=True, slots=True)
class EchoRequest:
    """`status` with a body echoing the request's path and headers, credentials included, as
    a debugging proxy or a careless gateway does."""

    status: int = 401

    name: ClassVar[str] = "echo"

    def __post_init__(self) -> None:
        if not 200 <= self.status <= 599:
            raise ValueError(f"an echo's status is 200-599, not {self.status}")

    @property
    def spec(self) -> str:
        return f"echo:status={self.status}"


@dataclass(frozen=True, slots=True)
class Garbage:
    """A random garbage answer per request (bodies, statuses, broken HTTP, resets); the
    draws of one fake come from one generator seeded with `seed`, so a run replays."""

    seed: int = 0

    name: ClassVar[str] = "garbage"

    @property
    def spec(self) -> str:
        return f"garbage:seed={self.seed}"


Fault: TypeAlias = (
    HttpError
    | Reset
    | Refuse
    | Hang
    | SlowBody
    | MalformedJson
    | WrongContentType
    | EmptyBody
    | EchoRequest
    | Garbage
)

_SIMPLE: dict[str, Fault] = {
    f.name: f for f in (Reset(), Refuse(), Hang(), MalformedJson(), WrongContentType(), EmptyBody())
}


def parse_fault(spec: str) -> Fault:
    """The fault `spec` spells (see the module docstring); ValueError says what is wrong."""
    name, _, rest = spec.strip().partition(":")
    options = _parse_options(rest, spec)
    if name.isdigit():
        unknown = options.keys() - {"retry-after", "retry-after-ms"}
        _reject_unknown(unknown, spec)
        retry_after = options.get("retry-after")
        retry_after_ms = options.get("retry-after-ms")
        return HttpError(
            int(name),
            retry_after=None if retry_after is None else _number(retry_after, spec),
            retry_after_ms=None if retry_after_ms is None else _integer(retry_after_ms, spec),
        )
    if name == SlowBody.name:
        _reject_unknown(options.keys() - {"chunk", "delay"}, spec)
        default = SlowBody()
        return SlowBody(
            chunk=_integer(options.get("chunk", str(default.chunk)), spec),
            delay=_number(options.get("delay", str(default.delay)), spec),
        )
    if name == EchoRequest.name:
        _reject_unknown(options.keys() - {"status"}, spec)
        return EchoRequest(_integer(options.get("status", "401"), spec))
    if name == Garbage.name:
        _reject_unknown(options.keys() - {"seed"}, spec)
        return Garbage(_integer(options.get("seed", "0"), spec))
    if name in _SIMPLE:
        _reject_unknown(options.keys(), spec)
        return _SIMPLE[name]
    known = ", ".join(
        ["<status>", *sorted([*_SIMPLE, SlowBody.name, EchoRequest.name, Garbage.name])]
    )
    raise ValueError(f"unknown fault {spec!r}; known: {known}")


def _parse_options(text: str, spec: str) -> dict[str, str]:
    options = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"fault {spec!r}: options are key=value, not {item!r}")
        options[key.strip()] = value.strip()
    return options


def _reject_unknown(keys: Collection[str], spec: str) -> None:
    if keys:
        raise ValueError(f"fault {spec!r}: unknown option(s) {', '.join(sorted(keys))}")


def _number(text: str, spec: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"fault {spec!r}: {text!r} is not a number") from None


def _integer(text: str, spec: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"fault {spec!r}: {text!r} is not a whole number") from None


@dataclass(frozen=True, slots=True)
class FakeReply:
    """One scripted answer. Without a body, errors get the dialect's error body, 200 a success."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    body: str | bytes | Mapping[str, Any] | None = None
    """A mapping is sent as JSON; str and bytes are sent as they are."""
    delay: float = 0.0
    """Seconds to wait before answering, on top of the server's latency."""
    hang: bool = False
    """Never answer; the same as `fault=Hang()`."""
    drop_connection: bool = False
    """Close the connection without answering; the same as `fault=Reset()`."""
    fault: Fault | None = None
    """Misbehave this way instead of answering with `status` and `body`."""

    def __post_init__(self) -> None:
        if isinstance(self.fault, Refuse):
            raise ValueError("refusing connections lasts a phase: use Phase(Refuse(), duration=…)")
        shapes = [self.fault is not None, self.hang, self.drop_connection]
        if sum(shapes) > 1 or (any(shapes) and (self.status != 200 or self.body is not None)):
            raise ValueError("a reply is one of: a status/body, a fault, a hang or a drop")

    @property
    def effective_fault(self) -> Fault | None:
        """The fault this reply plays, whichever way it was spelled; None to answer."""
        if self.hang:
            return Hang()
        if self.drop_connection:
            return Reset()
        return self.fault
