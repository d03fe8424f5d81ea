"""How many long-lived calls (StreamResults, WatchEvents) each caller identity has open.

Only counting lives here: the API layer says who the caller is, so the source
of identity (today the `aiproc-client-id` metadata) can change without
touching this module.
"""

from __future__ import annotations

from aiproc.server.core.errors import TooManyStreams

__all__ = ["StreamLimits", "StreamSlot"]


class StreamSlot:
    """One open stream of one identity; `release` it exactly once when the stream ends."""

    def __init__(self, limits: StreamLimits, identity: str) -> None:
        self._limits = limits
        self._identity = identity
        self._released = False

    def release(self) -> None:
        """Gives the slot back; a second call does nothing."""
        if not self._released:
            self._released = True
            self._limits._release(self._identity)


class StreamLimits:
    """Refuses an identity's stream beyond `per_identity` open at once on this server."""

    def __init__(self, per_identity: int) -> None:
        self._limit = per_identity
        self._open: dict[str, int] = {}

    def acquire(self, identity: str) -> StreamSlot:
        """A slot for one more stream of `identity`; raises TooManyStreams at the limit."""
        open_now = self._open.get(identity, 0)
        if open_now >= self._limit:
            raise TooManyStreams(
                f"client {identity!r} already has {open_now} streams open, the most allowed"
                f" (StreamResults and WatchEvents together, limit {self._limit}); close one"
                " before opening another"
            )
        self._open[identity] = open_now + 1
        return StreamSlot(self, identity)

    def _release(self, identity: str) -> None:
        left = self._open[identity] - 1
        if left:
            self._open[identity] = left
        else:
            del self._open[identity]  # identities come and go: no entry stays behind

    def __repr__(self) -> str:
        total = sum(self._open.values())
        return (
            f"<StreamLimits [{total} open by {len(self._open)} identities | limit {self._limit}]>"
        )
