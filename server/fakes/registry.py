"""The dialects `aiproc fake-provider --dialect NAME` knows, by name.

Adding a vendor's fake is one line in `DIALECTS` (and its import); code
outside this package, e.g. a test, can `register` its own at run time.
"""

from __future__ import annotations

from collections.abc import Callable

from aiproc.server.fakes.anthropic_dialect import AnthropicDialect
from aiproc.server.fakes.azure_dialect import AzureDialect
from aiproc.server.fakes.dialect import Dialect
from aiproc.server.fakes.gemini_dialect import GeminiDialect
from aiproc.server.fakes.ollama_dialect import OllamaDialect
from aiproc.server.fakes.openai_server import OpenAIDialect

__all__ = ["DIALECTS", "create_dialect", "register"]

DIALECTS: dict[str, Callable[[], Dialect]] = {
    "openai": OpenAIDialect,
    "anthropic": AnthropicDialect,
    "azure_openai": AzureDialect,
    "ollama": OllamaDialect,
    "gemini": GeminiDialect,
}
"""Each dialect's factory by its name; a factory is called once per fake server."""


def register(name: str, factory: Callable[[], Dialect]) -> None:
    """Makes `name` a dialect; ValueError if the name is taken."""
    if name in DIALECTS:
        raise ValueError(f"a fake dialect named {name!r} is already registered")
    DIALECTS[name] = factory


def create_dialect(name: str) -> Dialect:
    """A new dialect of the given name; ValueError lists the known names."""
    try:
        factory = DIALECTS[name]
    except KeyError:
        known = ", ".join(sorted(DIALECTS))
        raise ValueError(f"unknown fake dialect {name!r}; known: {known}") from None
    return factory()
