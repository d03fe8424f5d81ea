"""What makes a fake provider one vendor's: its routes, URLs, request checks and JSON shapes.

The engine (`FakeProviderServer`) does everything vendor-neutral: sockets,
recording, latency, scripted replies, phases of faults. A `Dialect` supplies
the rest, and never does I/O, so a new vendor's fake is a page of pure
functions:

    class MyDialect:
        name = "my-vendor"
        title = "My Vendor"

        def routes(self) -> Sequence[Route]:
            return (Route("POST", "/v1/generate", "completion"),)
        ...

Headers in a `FakeRequest` are lower-cased; a `FakeResponse` body that is a
mapping is sent as JSON, bytes are sent as they are (with the content type the
dialect put in `headers`, else application/json).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

__all__ = ["Dialect", "FakeError", "FakeRequest", "FakeResponse", "FakeUsage", "Route", "RouteKind"]

RouteKind = Literal["completion", "models"]
"""What an endpoint does: answer a prompt, or list the models on offer."""


@dataclass(frozen=True, slots=True)
class Route:
    """One endpoint of the fake: an HTTP method, an aiohttp path pattern and what it does."""

    method: str
    path: str
    """An aiohttp pattern, e.g. "/v1beta/models/{model}:generateContent"."""
    kind: RouteKind


@dataclass(frozen=True, slots=True)
class FakeRequest:
    """A request as the fake read it; also what the fake records."""

    method: str
    path: str
    match_info: Mapping[str, str]
    """The values of the route's {placeholders}."""
    query: Mapping[str, str]
    headers: Mapping[str, str]
    """Lower-cased names."""
    body: Any
    """The parsed JSON body; None when there is none or it is not JSON."""
    raw: bytes
    arrived_at: float
    """time.monotonic() when the request was read."""


@dataclass(frozen=True, slots=True)
class FakeUsage:
    """Token counts the engine estimated for one answer."""

    prompt_tokens: int
    completion_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class FakeError:
    """Why a real server would reject a request: the status and the message it would give."""

    status: int
    message: str


@dataclass(frozen=True, slots=True)
class FakeResponse:
    """An answer in a vendor's own shape; the engine puts it on the wire."""

    status: int
    body: bytes | Mapping[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


class Dialect(Protocol):
    """Everything vendor-specific about a fake provider; pure functions, no I/O."""

    @property
    def name(self) -> str:
        """The registry key and `--dialect` value, e.g. "openai"."""
        ...

    @property
    def title(self) -> str:
        """How the fake announces itself, e.g. "OpenAI-compatible"."""
        ...

    def routes(self) -> Sequence[Route]:
        """The endpoints to serve; paths under /_fake/ are the engine's."""
        ...

    def base_url(self, host: str, port: int) -> str:
        """What a provider config's base_url should be to reach the fake on host:port.

        `host` comes as it goes in a URL: an IPv6 address is already in brackets.
        """
        ...

    def check_request(self, kind: RouteKind, request: FakeRequest) -> FakeError | None:
        """Why a real server would refuse `request` (auth, body shape), or None to accept it."""
        ...

    def success(
        self, kind: RouteKind, request: FakeRequest, content: str, usage: FakeUsage
    ) -> FakeResponse:
        """The vendor's success answer; `content` and `usage` are meaningful for completions.

        `usage.prompt_tokens` estimates `prompt_text`; a dialect whose requests
        carry more prompt (a system message, history) may count that too.
        """
        ...

    def error(self, status: int, message: str) -> FakeResponse:
        """The vendor's error answer for `status`, with its own error body shape."""
        ...

    def prompt_text(self, request: FakeRequest) -> str:
        """The user's text in an accepted completion request, which the fake's answer echoes."""
        ...
