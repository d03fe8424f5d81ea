"""The server's one interceptor: every method's handler as aiproc serves it, built once.

An interceptor sees every method of every service registered on the server, so
nothing is served without passing here. Each method's handler is wrapped twice:
its requests are parsed by aiproc (decoding.py), and, except on the open
services (health, and reflection when it is on), its caller is authenticated and
authorized before it runs (auth.py): deny by default. The wrapped handler
depends on the method alone, so it is built on the method's first call and
reused, and a call costs one lookup here rather than new closures and handlers
(one interceptor, not two, also spares grpc.aio a step per call).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from aiproc.server.api.auth import Admission
from aiproc.server.api.decoding import decoding

if TYPE_CHECKING:  # subscriptable only in the type stubs
    Handler = grpc.RpcMethodHandler[Any, Any]


class ServedMethods(grpc.aio.ServerInterceptor):
    """Gives each call its method's decoding, admitting handler (see above)."""

    def __init__(self, admission: Admission, *, open_services: Iterable[str]) -> None:
        self._admission = admission
        self._open = frozenset(open_services)
        self._served: dict[str, tuple[Handler, Handler]] = {}
        """Each method called so far: its registered handler, and the one served."""

    def __repr__(self) -> str:
        return (
            f"<ServedMethods {self._admission!r} open={sorted(self._open)}"
            f" [{len(self._served)} methods served]>"
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # no such method: gRPC answers UNIMPLEMENTED
        method = handler_call_details.method
        served = self._served.get(method)
        if served is None or served[0] is not handler:
            served = self._served[method] = (handler, self._serve(method, handler))
        return served[1]

    def _serve(self, method: str, handler: Handler) -> Handler:
        decoded = decoding(handler)
        if method.lstrip("/").rpartition("/")[0] in self._open:
            return decoded
        return self._admission.guard(method, decoded)
