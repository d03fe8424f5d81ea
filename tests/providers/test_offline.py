from __future__ import annotations

from aiproc.server.core.models import TaskSpec
from aiproc.server.providers.base import Completion, CompletionRequest, Provider
from aiproc.server.providers.offline import (
    INSTRUCTIONS_NOTE,
    LABEL,
    OFFLINE_CONTEXT_WINDOW,
    OfflineProvider,
    summarise,
)
from aiproc.server.providers.prompt import build_messages, estimate_tokens, parse_messages

ARTICLE = """Photosynthesis in plants

Photosynthesis is the process by which plants turn light into chemical energy. \
The weather was pleasant on the day of the visit. \
Chlorophyll in the leaves absorbs light, and photosynthesis stores that energy as sugar. \
Lunch was served at noon. \
Without photosynthesis, plants could not grow and most life would lose its energy source. \
The bus left on time. \
Scientists study photosynthesis to make plants convert light into energy more efficiently. \
Some visitors bought postcards. \
Everyone went home afterwards.
"""


def request_for(spec: TaskSpec) -> CompletionRequest:
    messages = build_messages(spec, context_window=OFFLINE_CONTEXT_WINDOW, max_tokens=2048)
    return CompletionRequest(
        messages=messages, model="", max_tokens=2048, temperature=0.7, timeout=10.0
    )


async def run(content: str, instructions: str = "") -> Completion:
    spec = TaskSpec(url="https://example.com/p", content=content, instructions=instructions)
    return await OfflineProvider().complete(request_for(spec))


def section(text: str, title: str) -> list[str]:
    """The non-empty lines under a "## title" heading."""
    lines = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0].splitlines()
    return [line for line in lines if line.strip()]


async def test_is_a_provider_named_offline() -> None:
    provider = OfflineProvider()

    assert isinstance(provider, Provider)
    assert (provider.name, provider.kind, provider.model) == (
        "offline",
        "offline",
        "aiproc-offline-extractive-1",
    )
    assert OfflineProvider("local-summary").name == "local-summary"
    assert "offline" in repr(provider)


async def test_output_is_labelled_as_not_from_a_language_model() -> None:
    completion = await run(ARTICLE)

    assert completion.content.splitlines()[0] == LABEL
    assert "no language model was called" in LABEL
    assert completion.model == "aiproc-offline-extractive-1"
    assert completion.finish_reason == "stop"
    assert "**Source:** https://example.com/p" in completion.content


async def test_output_is_deterministic() -> None:
    first = await run(ARTICLE)
    second = await run(ARTICLE)

    assert first == second


async def test_summary_picks_the_central_sentences_in_their_original_order() -> None:
    completion = await run(ARTICLE)

    summary = [line.removeprefix("- ") for line in section(completion.content, "Summary")]
    assert len(summary) == 3
    positions = [ARTICLE.index(sentence) for sentence in summary]
    assert positions == sorted(positions)
    assert all("photosynthesis" in sentence.lower() for sentence in summary)


async def test_key_terms_are_the_frequent_words_without_stopwords() -> None:
    completion = await run(ARTICLE)

    [terms_line] = section(completion.content, "Key terms")
    terms = terms_line.split(", ")
    assert terms[:3] == ["photosynthesis", "plants", "energy"]
    assert len(terms) == 8
    assert not {"the", "and", "into", "by"} & set(terms)


async def test_statistics_count_words_and_sentences() -> None:
    completion = await run(ARTICLE)

    stats = section(completion.content, "Statistics")
    assert f"- Words: {len(ARTICLE.split())}" in stats
    assert "- Sentences: 10" in stats
    assert "- Reading time: under a minute" in stats


async def test_instructions_are_noted_as_not_followed() -> None:
    with_instructions = await run(ARTICLE, instructions="Translate to French.")
    without = await run(ARTICLE)

    assert with_instructions.content.splitlines()[1] == INSTRUCTIONS_NOTE
    assert INSTRUCTIONS_NOTE not in without.content


async def test_usage_counts_prompt_and_output_tokens() -> None:
    request = request_for(TaskSpec(url="u", content=ARTICLE))

    completion = await OfflineProvider().complete(request)

    assert completion.usage.input_tokens == sum(
        estimate_tokens(m.content) for m in request.messages
    )
    assert completion.usage.output_tokens == estimate_tokens(completion.content)


async def test_empty_content_gives_an_honest_empty_summary() -> None:
    for content in ("", "   \n\n  ", "12345 ---"):
        completion = await run(content)

        assert completion.content.startswith(LABEL)
        assert "- Words:" in completion.content
    assert "no text to summarise" in (await run("")).content


async def test_a_single_sentence_is_its_own_summary() -> None:
    completion = await run("Just one short line")

    assert section(completion.content, "Summary") == ["- Just one short line"]


async def test_non_english_text_is_summarised() -> None:
    japanese = (
        "東京は日本の首都です。東京には多くの人が住んでいます。富士山は日本で一番高い山です。"
    )
    german = "Der Hund läuft schnell. Die Katze schläft. Der Hund bellt laut im Garten des Hauses."

    for content in (japanese, german):
        summary = section((await run(content)).content, "Summary")
        assert summary
        assert all(line.removeprefix("- ") in content for line in summary)
    german_terms = section((await run(german)).content, "Key terms")[0].split(", ")
    assert german_terms[0] == "hund"
    assert "der" not in german_terms


async def test_markdown_list_items_are_sentences_without_their_bullets() -> None:
    content = "# Title here\n- first item is a long sentence\n- second item is also long\n"

    summary = section((await run(content)).content, "Summary")

    assert "- first item is a long sentence" in summary
    assert not any(line.startswith("- - ") or line.startswith("- #") for line in summary)


async def test_truncated_content_is_reported() -> None:
    spec = TaskSpec(url="u", content="A sentence about truncation. " * 5000)
    messages = build_messages(spec, context_window=4096, max_tokens=1024)

    completion = await OfflineProvider().complete(
        CompletionRequest(messages=messages, model="", max_tokens=1024, temperature=0, timeout=5)
    )

    assert f"of {len(spec.content):,} characters kept" in completion.content


async def test_one_mebibyte_is_summarised_quickly() -> None:
    words = [f"term{i % 997}" for i in range(20_000)]
    sentences = [" ".join(words[i : i + 12]) + "." for i in range(0, len(words), 12)]
    content = (" ".join(sentences) + "\n\n") * 8
    content = content[: 1 << 20]
    assert len(content) == 1 << 20
    parts = parse_messages(
        build_messages(
            TaskSpec(url="u", content=content), context_window=OFFLINE_CONTEXT_WINDOW, max_tokens=0
        )
    )
    assert not parts.truncated

    text = summarise(parts)  # how fast is a benchmark's question, not a test's

    assert len(section(text, "Summary")) == 5
    assert len(text) < 5000


async def test_one_mebibyte_without_punctuation_gives_a_short_summary() -> None:
    completion = await run("word " * (1 << 18))

    [line] = section(completion.content, "Summary")
    assert len(line) < 500
    assert line.endswith("…")


async def test_is_always_healthy_without_calling_out() -> None:
    # Nothing to reach, so not even a zero timeout can fail it.
    await OfflineProvider().check_health(timeout=0.0)
