from __future__ import annotations

import re

import pytest

from aiproc.server.core.models import TaskSpec
from aiproc.server.providers.base import ChatMessage
from aiproc.server.providers.prompt import (
    DEFAULT_SYSTEM_PROMPT,
    MIN_CONTENT_TOKENS,
    build_messages,
    context_window_for,
    estimate_tokens,
    parse_messages,
)

MARKER = re.compile(r"\n\[… content truncated: (\d+) of (\d+) characters kept\]\Z")


def prompt_tokens(messages: tuple[ChatMessage, ...]) -> int:
    return sum(estimate_tokens(m.content) for m in messages)


def test_default_prompt_is_the_reference_prompt() -> None:
    spec = TaskSpec(url="https://example.com/a", content="Hello world.")

    system, user = build_messages(spec, context_window=8192, max_tokens=1024)

    assert system == ChatMessage(
        "system",
        "You are an AI assistant that helps analyze and enhance web content. Analyze and "
        "enhance the given web content by extracting key information, improving clarity, "
        "and adding structured insights.",
    )
    assert user == ChatMessage("user", "URL: https://example.com/a\n\nContent:\nHello world.")


def test_instructions_replace_the_system_prompt() -> None:
    spec = TaskSpec(url="u", content="c", instructions="  List the prices as a table.  ")

    system, _ = build_messages(spec, context_window=8192, max_tokens=1024)

    assert system == ChatMessage("system", "List the prices as a table.")


def test_blank_instructions_keep_the_default_prompt() -> None:
    spec = TaskSpec(url="u", content="c", instructions=" \n ")

    system, _ = build_messages(spec, context_window=8192, max_tokens=1024)

    assert system.content == DEFAULT_SYSTEM_PROMPT


def test_content_that_fits_is_sent_whole() -> None:
    content = "word " * 1000
    spec = TaskSpec(url="u", content=content)

    _, user = build_messages(spec, context_window=8192, max_tokens=1024)

    assert user.content.endswith(content)
    assert MARKER.search(user.content) is None


def test_long_content_is_cut_to_the_budget_on_a_word_with_a_marker() -> None:
    content = "alpha beta gamma delta " * 20_000
    spec = TaskSpec(url="https://example.com", content=content)

    messages = build_messages(spec, context_window=8192, max_tokens=2048)

    assert prompt_tokens(messages) + 2048 <= 8192
    # Most of the room is used: truncation is not needlessly aggressive.
    assert prompt_tokens(messages) + 2048 > 8192 * 0.85
    user = messages[1].content
    marker = MARKER.search(user)
    assert marker is not None
    kept_text = user[len("URL: https://example.com\n\nContent:\n") : marker.start()]
    assert int(marker.group(1)) == len(kept_text)
    assert int(marker.group(2)) == len(content)
    assert content.startswith(kept_text)
    assert kept_text.split()[-1] in {"alpha", "beta", "gamma", "delta"}
    assert content[len(kept_text)] == " "


def test_text_without_spaces_is_cut_hard() -> None:
    content = "x" * 200_000
    messages = build_messages(TaskSpec(url="u", content=content), context_window=4096, max_tokens=0)

    assert prompt_tokens(messages) <= 4096
    assert MARKER.search(messages[1].content) is not None


def test_non_latin_content_is_budgeted_at_a_token_per_character() -> None:
    content = "日本語のテキストです。" * 20_000
    messages = build_messages(
        TaskSpec(url="u", content=content), context_window=8192, max_tokens=1024
    )

    kept = parse_messages(messages).content
    assert prompt_tokens(messages) + 1024 <= 8192
    # At four characters a token this would have kept four times as much.
    assert 4000 < len(kept) < 7168


@pytest.mark.parametrize(("context_window", "max_tokens"), [(512, 2048), (1024, 1024), (300, 0)])
def test_tiny_windows_still_keep_a_minimum_of_content(context_window: int, max_tokens: int) -> None:
    content = "sentence number one. " * 5000
    messages = build_messages(
        TaskSpec(url="u", content=content), context_window=context_window, max_tokens=max_tokens
    )

    kept = parse_messages(messages)
    assert kept.truncated
    assert MIN_CONTENT_TOKENS * 0.8 < estimate_tokens(kept.content) <= MIN_CONTENT_TOKENS


def test_estimate_tokens_counts_ascii_by_four_and_other_characters_by_one() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("日本") == 2
    assert estimate_tokens("abcd日本") == 3


def test_parse_messages_reads_back_what_build_messages_wrote() -> None:
    spec = TaskSpec(
        url="https://e.x/p", content="one two three " * 10_000, instructions="Be brief."
    )
    messages = build_messages(spec, context_window=2048, max_tokens=512)

    parts = parse_messages(messages)

    assert parts.url == "https://e.x/p"
    assert parts.custom_instructions
    assert parts.truncated
    assert parts.total_chars == len(spec.content)
    assert spec.content.startswith(parts.content)
    assert len(parts.content) == parts.kept_chars


def test_parse_messages_takes_foreign_messages_whole() -> None:
    parts = parse_messages((ChatMessage("user", "just a question"),))

    assert (parts.url, parts.content, parts.custom_instructions) == ("", "just a question", False)
    assert not parts.truncated


@pytest.mark.parametrize(
    ("model", "window"),
    [
        ("gpt-3.5-turbo", 16_385),
        ("gpt-4", 8_192),
        ("gpt-4-0613", 8_192),
        ("gpt-4-turbo-2024-04-09", 128_000),
        ("gpt-4o", 128_000),
        ("gpt-4o-mini", 128_000),
        ("gpt-4.1-mini", 1_047_576),
        ("o1-mini", 128_000),
        ("o3-mini", 200_000),
        ("o4-mini", 200_000),
        ("llama3:8b", 8_192),
        ("llama3.1:8b", 131_072),
        ("meta-llama/Meta-Llama-3.1-8B-Instruct", 131_072),
        ("GPT-4o", 128_000),
        ("some-local-model", 8_192),
        ("", 8_192),
    ],
)
def test_context_window_for_known_and_unknown_models(model: str, window: int) -> None:
    assert context_window_for(model) == window
