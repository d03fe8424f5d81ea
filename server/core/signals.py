"""What one replica tells the others about a provider, so they act on it too.

A 429's Retry-After pause and a breaker opening or closing are facts about the
provider, not about the replica that saw them. With a shared store (Redis)
every replica applies them; a lone server uses `NoSignals`.
"""

from __future__ import annotations

from typing import Protocol


class ProviderSignals(Protocol):
    def provider_paused(self, provider: str, seconds: float) -> None:
        """This replica paused `provider` for `seconds` (a Retry-After); never blocks."""
        ...

    def breaker_changed(self, provider: str, opened: bool) -> None:
        """This replica's breaker for `provider` opened (or closed again); never blocks."""
        ...


class NoSignals:
    """For a server that is the only replica: there is nobody to tell."""

    def provider_paused(self, provider: str, seconds: float) -> None:
        pass

    def breaker_changed(self, provider: str, opened: bool) -> None:
        pass
