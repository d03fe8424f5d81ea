"""The prompt sent for a task, with the content cut to fit the model's context window."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from aiproc.server.core.models import TaskSpec
from aiproc.server.providers.base import ChatMessage

DEFAULT_SYSTEM_PROMPT = (
    "You are an AI assistant that helps analyze and enhance web content. "
    "Analyze and enhance the given web content by extracting key information, "
    "improving clarity, and adding structured insights."
)
_USER_PREFIX = "URL: {url}\n\nContent:\n"
_CONTENT_LABEL = "\n\nContent:\n"
_MARKER = "\n[… content truncated: {kept} of {total} characters kept]"
_MARKER_RE = re.compile(r"\n\[… content truncated: (\d+) of (\d+) characters kept\]\Z")

CHARS_PER_TOKEN = 4
MIN_CONTENT_TOKENS = 256
"""Content kept even when max_tokens leaves no room: a prompt without content is useless."""
# The chat format wraps each message in a few tokens (role, separators) and
# primes the reply with a few more.
_FRAMING_TOKENS = 16
# Tokenizers differ from the estimate; 5% of the window absorbs the difference.
_MARGIN_FRACTION = 0.05
# How far back from the cut to look for whitespace before cutting mid-word.
_WORD_LOOKBACK = 200
_LAST_SPACE = re.compile(r"\s\S*\Z")

# Longest matching prefix wins, so "gpt-4o" is found before "gpt-4".
_CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-3.5-turbo": 16_385,
    "gpt-4": 8_192,
    "gpt-4-32k": 32_768,
    "gpt-4-turbo": 128_000,
    "gpt-4-1106": 128_000,
    "gpt-4-0125": 128_000,
    "gpt-4o": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-5": 400_000,
    "o1": 200_000,
    "o1-mini": 128_000,
    "o1-preview": 128_000,
    "o3": 200_000,
    "o4": 200_000,
    "llama3": 8_192,
    "llama-3": 8_192,
    "llama3.1": 131_072,
    "llama-3.1": 131_072,
    "llama3.2": 131_072,
    "llama-3.2": 131_072,
    "llama3.3": 131_072,
    "llama-3.3": 131_072,
    "mistral-large": 131_072,
    "mixtral": 32_768,
    "qwen2.5": 32_768,
}
DEFAULT_CONTEXT_WINDOW = 8_192


def context_window_for(model: str) -> int:
    """Tokens the named model accepts, from a table of known models; 8192 when unknown."""
    # "meta-llama/Meta-Llama-3.1-8B-Instruct" (vLLM) and "llama3.1:8b" (Ollama)
    # both name llama-3.1.
    name = model.strip().lower().rsplit("/", 1)[-1].removeprefix("meta-")
    best = ""
    for prefix in _CONTEXT_WINDOWS:
        if name.startswith(prefix) and len(prefix) > len(best):
            best = prefix
    return _CONTEXT_WINDOWS[best] if best else DEFAULT_CONTEXT_WINDOW


def estimate_tokens(text: str) -> int:
    """A deliberately high token count: four ASCII characters per token, one per other character."""
    # Non-Latin scripts run near one token per character in common tokenizers,
    # so counting them at four per token would overflow the window.
    ascii_chars = len(text.encode("ascii", "ignore"))
    return math.ceil(ascii_chars / CHARS_PER_TOKEN) + (len(text) - ascii_chars)


def build_messages(
    spec: TaskSpec, *, context_window: int, max_tokens: int
) -> tuple[ChatMessage, ...]:
    """The system and user messages for `spec`, its content truncated to fit the window.

    Non-empty `spec.instructions` replace the default system prompt. The
    content is cut so the estimated prompt plus `max_tokens` fits
    `context_window`, but never below MIN_CONTENT_TOKENS; a cut content ends
    with a marker saying how much was kept.
    """
    system = spec.instructions.strip() or DEFAULT_SYSTEM_PROMPT
    prefix = _USER_PREFIX.format(url=spec.url)
    budget = (
        context_window
        - max_tokens
        - math.ceil(context_window * _MARGIN_FRACTION)
        - _FRAMING_TOKENS
        - estimate_tokens(system)
        - estimate_tokens(prefix)
    )
    content = _fit(spec.content, max(budget, MIN_CONTENT_TOKENS))
    return ChatMessage("system", system), ChatMessage("user", prefix + content)


def _fit(content: str, budget: int) -> str:
    """`content` if it fits `budget` tokens, else its longest prefix that fits with the marker."""
    if estimate_tokens(content) <= budget:
        return content
    total = len(content)
    worst_marker = _MARKER.format(kept=total, total=total)
    limit = _prefix_length(content, max(budget - estimate_tokens(worst_marker), 1))
    kept = _cut_at_word(content, limit)
    return kept + _MARKER.format(kept=len(kept), total=total)


def _prefix_length(text: str, budget: int) -> int:
    """The length of the longest prefix of `text` estimated at no more than `budget` tokens."""
    if text.isascii():
        return min(len(text), budget * CHARS_PER_TOKEN)
    # Every character costs between 1/4 and 1 token, which brackets the answer.
    low, high = min(len(text), budget), min(len(text), budget * CHARS_PER_TOKEN)
    while low < high:
        middle = (low + high + 1) // 2
        if estimate_tokens(text[:middle]) <= budget:
            low = middle
        else:
            high = middle - 1
    return low


def _cut_at_word(text: str, limit: int) -> str:
    """`text[:limit]`, moved back to the last whitespace nearby so no word is split."""
    if limit < len(text) and not text[limit].isspace():
        match = _LAST_SPACE.search(text, max(limit - _WORD_LOOKBACK, 0), limit)
        if match is not None:
            limit = match.start()
    return text[:limit].rstrip()


@dataclass(frozen=True, slots=True)
class PromptParts:
    """What `build_messages` put into a prompt, read back out of it."""

    url: str
    content: str
    custom_instructions: bool
    """Whether the system message is not the default prompt."""
    kept_chars: int
    """Characters of the original content in `content`."""
    total_chars: int
    """Characters of the original content; more than kept_chars when it was truncated."""

    @property
    def truncated(self) -> bool:
        return self.kept_chars < self.total_chars


def parse_messages(messages: Sequence[ChatMessage]) -> PromptParts:
    """The URL, content and instructions flag of a prompt made by `build_messages`.

    For messages in another shape, the last user message is the content.
    """
    system = next((m.content for m in messages if m.role == "system"), DEFAULT_SYSTEM_PROMPT)
    user = next((m.content for m in reversed(messages) if m.role == "user"), "")
    url = ""
    head, label, body = user.partition(_CONTENT_LABEL)
    if label and head.startswith("URL: ") and "\n" not in head:
        url, user = head.removeprefix("URL: "), body
    kept = total = len(user)
    marker = _MARKER_RE.search(user)
    if marker is not None:
        user = user[: marker.start()]
        kept, total = int(marker.group(1)), int(marker.group(2))
    return PromptParts(
        url=url,
        content=user,
        custom_instructions=system.strip() != DEFAULT_SYSTEM_PROMPT,
        kept_chars=kept,
        total_chars=total,
    )
