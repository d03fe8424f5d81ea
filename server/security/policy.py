"""Which role each RPC needs. Deny by default: a method not listed here is for admins."""

from __future__ import annotations

from aiproc.server.core.errors import PermissionDenied
from aiproc.server.security.caller import Caller, Role

SERVICE = "aiproc.v1.ProcessorService"

CLIENT_METHODS = frozenset(
    {"QueueTask", "GetTask", "CancelTask", "ListTasks", "RequeueTask", "StreamResults", "Stats"}
)
"""What a client may call: all of it scoped to the client's own tenant by the processor
(Stats answers a client with its own tenant's figures only)."""

ADMIN_METHODS = {
    "WatchEvents": "provider events concern every tenant",
}
"""Methods for admins only, with why (said in the PERMISSION_DENIED message)."""


def method_name(full_method: str) -> str:
    """`GetTask` of `/aiproc.v1.ProcessorService/GetTask`; the full name for other services."""
    service, _, name = full_method.lstrip("/").rpartition("/")
    return name if service == SERVICE else full_method


def authorize(caller: Caller, full_method: str) -> None:
    """Raises PermissionDenied unless `caller`'s role may call `full_method`."""
    name = method_name(full_method)
    if caller.role is Role.ADMIN or name in CLIENT_METHODS:
        return
    why = ADMIN_METHODS.get(name, "it is not open to clients")
    raise PermissionDenied(
        f"{name} needs role admin, and this caller's role is {caller.role}: {why}"
    )
