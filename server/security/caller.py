"""Who is calling: a tenant and a role, resolved once per RPC and read by the servicer."""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    CLIENT = "client"
    """Queues, reads, streams, cancels and requeues its own tenant's tasks."""
    ADMIN = "admin"
    """Also Stats and WatchEvents, and may act for any tenant (metadata aiproc-client-id)."""


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    """The client identity tasks are filed under; a caller sees only its tenant's tasks."""
    role: Role
    via: str
    """How the caller was identified, for logs: "open", "key NAME" or "certificate"."""

    def __repr__(self) -> str:
        return f"<Caller {self.tenant} ({self.role}, via {self.via})>"


# Set by the auth interceptor in the RPC's own task, right before it runs the servicer's
# handler, which reads it in the same task: plain call-stack inheritance, not grpc's.
_CURRENT: contextvars.ContextVar[Caller] = contextvars.ContextVar("aiproc_caller")


def enter(caller: Caller) -> None:
    """Makes `caller` the caller of the RPC running in this task."""
    _CURRENT.set(caller)


def current_caller() -> Caller:
    """The caller of the RPC running in this task.

    Raises RuntimeError when none was resolved (a handler reached without the auth
    interceptor): failing closed, never falling back to a default identity.
    """
    try:
        return _CURRENT.get()
    except LookupError:
        raise RuntimeError(
            "no caller resolved: the RPC did not pass the auth interceptor"
        ) from None
