"""A provider that needs no key and no network: a labelled, deterministic extractive summary.

It is what the service runs when no language model is configured, so that a
fresh install does real work. Its output says plainly that no model was called.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import re
from collections import Counter

from aiproc.server.core.models import TokenUsage
from aiproc.server.providers.base import Completion, CompletionRequest
from aiproc.server.providers.prompt import PromptParts, estimate_tokens, parse_messages

OFFLINE_MODEL = "aiproc-offline-extractive-1"
OFFLINE_CONTEXT_WINDOW = 1 << 21
"""Large enough that content within the default 1 MiB limit is never truncated."""

LABEL = "> Offline extractive summary by aiproc (no language model was called)."
INSTRUCTIONS_NOTE = (
    "> Custom instructions were given, but the offline provider cannot follow them; "
    "this is its standard summary."
)

_KEY_TERMS = 8
_WORDS_PER_MINUTE = 230
_MAX_SENTENCE_CHARS = 400
# Fewer words than this and a "sentence" is usually a menu item or a heading.
_MIN_SUMMARY_WORDS = 4
# Text without spaces between words (Chinese, Japanese) has few "words"; this
# many characters make it a sentence all the same.
_MIN_SUMMARY_CHARS = 30
# Dividing by at least this many words keeps a three-word sentence with one
# frequent term from outscoring every real sentence.
_MIN_LENGTH_NORM = 8

# A sentence ends at . ! ? or … followed by space (closing quotes and brackets
# stay with it), right after a CJK full stop, at a blank line, or before a
# line that starts a list item or a heading.
_LIST_OR_HEADING = r"(?:[-*+\u2022]|\d{1,3}[.)]|#{1,6})\s"
_SENTENCE_END = re.compile(
    r"(?<=[.!?\u2026])[\"'\u201d\u2019)\]]*\s+|(?<=[\u3002\uff01\uff1f])\s*|\n\s*\n"
    rf"|\n(?=[ \t]*{_LIST_OR_HEADING})"
)
_LEADING_MARK = re.compile(rf"^{_LIST_OR_HEADING}\s*")
# Letters, with inner apostrophes and hyphens: "don't", "e-mail".
_WORD = re.compile(r"[^\W\d_]+(?:['\u2019-][^\W\d_]+)*")

# The commonest function words of English, French, German and Spanish: they
# say nothing about what a text is about.
_STOPWORD_LIST = """
    a about above after again against all also am an and any are as at be because been
    before being below between both but by can could did do does doing down during each
    even few for from further get got had has have having he her here hers herself him
    himself his how however i if in into is it its itself just let like made make many
    may me might more most much must my myself new no nor not now of off often on once
    one only or other our ours ourselves out over own per said same say says she should
    since so some such than that the their theirs them themselves then there these they
    this those through to too two under until up upon us use used using very via was we
    well were what when where whether which while who whom whose why will with within
    without would yet you your yours yourself yourselves
    au aux avec ce ces dans de des du elle en est et il ils je la le les leur lui mais me
    même mes moi mon ne nous on ou où par pas pour qu que qui sa se ses son sont sur ta te
    tes toi ton tu un une vos votre vous été être avoir
    aber als am an auch auf aus bei bin bis da das dass dem den der des die dies doch du
    ein eine einem einen einer eines er es für hat hatte ich ihr im in ist ja kann mit
    nach nicht noch nur oder sich sie sind so um und uns von vor war was wenn wie wir wird
    zu zum zur über
    al como con del el ella ellos era es esta este están fue ha hay las lo los más muy no
    nos para pero por qué se ser sin sobre son su sus también tiene todo una uno y ya
"""
_STOPWORDS = frozenset(_STOPWORD_LIST.split())


class OfflineProvider:
    """Summarises the task's content locally, with no language model."""

    def __init__(
        self, name: str = "offline", *, context_window: int = OFFLINE_CONTEXT_WINDOW
    ) -> None:
        self._name = name
        self._context_window = context_window

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return "offline"

    @property
    def model(self) -> str:
        return OFFLINE_MODEL

    @property
    def context_window(self) -> int:
        return self._context_window

    async def complete(self, request: CompletionRequest) -> Completion:
        """Returns the extractive summary of the prompt's content; never calls out."""
        # A megabyte of text takes a noticeable fraction of a second: off the event loop.
        text = await asyncio.to_thread(summarise, parse_messages(request.messages))
        prompt_tokens = sum(estimate_tokens(message.content) for message in request.messages)
        return Completion(
            content=text,
            model=OFFLINE_MODEL,
            usage=TokenUsage(prompt_tokens, estimate_tokens(text)),
            finish_reason="stop",
        )

    async def check_health(self, timeout: float) -> None:  # noqa: ASYNC109
        """Always healthy: there is nothing to reach."""

    async def aclose(self) -> None:
        """Holds no resources."""

    def __repr__(self) -> str:
        return f"<OfflineProvider name={self._name!r} model={OFFLINE_MODEL!r}>"


def summarise(parts: PromptParts) -> str:
    """A Markdown report of `parts.content`: label, summary, key terms and statistics."""
    sentences = [
        _LEADING_MARK.sub("", " ".join(s.split())) for s in _SENTENCE_END.split(parts.content)
    ]
    sentences = [s for s in sentences if s]
    words_per_sentence = [_WORD.findall(s.lower()) for s in sentences]
    # Counting everything, then dropping stopwords, keeps the loop in C.
    frequencies = Counter(itertools.chain.from_iterable(words_per_sentence))
    for stopword in _STOPWORDS & frequencies.keys():
        del frequencies[stopword]
    word_count = len(parts.content.split())

    lines = [LABEL]
    if parts.custom_instructions:
        lines.append(INSTRUCTIONS_NOTE)
    if parts.url:
        lines += ["", f"**Source:** {parts.url}"]
    lines += ["", "## Summary", ""]
    summary = _top_sentences(sentences, words_per_sentence, frequencies)
    if summary:
        lines += [f"- {_clip(sentence)}" for sentence in summary]
    else:
        lines.append("The content has no text to summarise.")
    terms = [term for term, _ in frequencies.most_common() if len(term) > 2][:_KEY_TERMS]
    if terms:
        lines += ["", "## Key terms", "", ", ".join(terms)]
    lines += [
        "",
        "## Statistics",
        "",
        f"- Words: {word_count:,}",
        f"- Sentences: {len(sentences):,}",
        f"- Reading time: {_reading_time(word_count)}",
    ]
    if parts.truncated:
        lines.append(
            f"- Truncated before processing: {parts.kept_chars:,} of "
            f"{parts.total_chars:,} characters kept"
        )
    return "\n".join(lines) + "\n"


def _top_sentences(
    sentences: list[str], words_per_sentence: list[list[str]], frequencies: Counter[str]
) -> list[str]:
    """The 3 to 5 sentences richest in the text's frequent terms, in their original order."""
    wanted = 3 if len(sentences) < 15 else 4 if len(sentences) < 40 else 5
    candidates = [
        i
        for i, (sentence, words) in enumerate(zip(sentences, words_per_sentence, strict=True))
        if len(words) >= _MIN_SUMMARY_WORDS or len(sentence) >= _MIN_SUMMARY_CHARS
    ] or list(range(len(sentences)))
    top = max(frequencies.values(), default=1)

    def score(index: int) -> float:
        words = words_per_sentence[index]
        weight = sum(frequencies.get(word, 0) for word in words) / top
        return weight / max(len(words), _MIN_LENGTH_NORM)

    # Ties go to the earlier sentence, which keeps the choice deterministic.
    chosen = sorted(candidates, key=lambda i: (-score(i), i))[:wanted]
    return [sentences[i] for i in sorted(chosen)]


def _clip(sentence: str) -> str:
    """`sentence`, cut at a word near _MAX_SENTENCE_CHARS when longer."""
    if len(sentence) <= _MAX_SENTENCE_CHARS:
        return sentence
    cut = sentence.rfind(" ", 0, _MAX_SENTENCE_CHARS)
    return sentence[: cut if cut > 0 else _MAX_SENTENCE_CHARS] + " …"


def _reading_time(words: int) -> str:
    if words == 0:
        return "none"
    minutes = math.ceil(words / _WORDS_PER_MINUTE)
    return "under a minute" if words < _WORDS_PER_MINUTE else f"about {minutes} min"
