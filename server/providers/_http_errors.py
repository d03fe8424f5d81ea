"""What every HTTP provider does with a vendor's error: read it, redact it, classify it.

The classification, shared by all vendors unless one knows better:

    429, or 503 with a retry hint          RateLimited(retry_after)
    408, 5xx (Anthropic's 529 included)    TransientError
    401, 403                               AuthenticationFailed
    other 4xx                              InvalidRequest
    anything else                          BadResponse
"""

from __future__ import annotations

import datetime
import email.utils
import json
import re
import unicodedata
from collections.abc import Callable, Mapping
from typing import Any

import httpx

from aiproc.server.core.errors import (
    AuthenticationFailed,
    BadResponse,
    InvalidRequest,
    ProviderError,
    RateLimited,
    TransientError,
)

_EXCERPT_CHARS = 200
# Vendor text is cut to this before any other work: an 8 MiB error body must not cost
# seconds of regular expressions on the event loop, and only its start is ever shown.
_SCAN_CHARS = 4096
# A secret cut short by that or by the excerpt's end still leaks its start; a trailing
# piece of a known secret this long or longer is hidden too.
_MIN_SECRET_PIECE = 4
URL_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")
"""The user:password@ part of a URL."""
_SECRET_PATTERNS = (
    # OpenAI's and Anthropic's (sk-ant-…) keys, Google's (AIza…) keys, JWTs (Azure AD
    # tokens), bearer and basic credentials, and the value after a key- or token-named
    # field, as an echoed header or query string shows it.
    re.compile(r"\bsk-[A-Za-z0-9_*\-]{6,}"),
    re.compile(r"\bAIza[A-Za-z0-9_\-]{20,}"),
    re.compile(r"\beyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*"),
    re.compile(r"(?i)\b(?:bearer|basic)\s+\S+"),
    re.compile(
        r"(?i)(?<![\w-])(?:x-)?(?:api[-_]?key|x-goog-api-key|access[-_]?token|token"
        r"|secret|password|authorization)[\"']?\s*[:=]\s*[\"']?[^\s\"',;&}]+"
    ),
    URL_USERINFO,
)


def _unprintable(char: str) -> bool:
    # Cc: C0 and C1 controls; Cf: bidi overrides and zero-width characters, which can make
    # a log line or a terminal show something else than it holds; Cs, Co, Cn: surrogates,
    # private use, unassigned.
    return unicodedata.category(char)[0] == "C"


_LABELS_KEPT = 256
"""Distinct vendor words a Redactor remembers as made safe, at most."""


class Redactor:
    """Turns vendor text into a short, one-line excerpt that never shows a key."""

    def __init__(self, secrets: tuple[str, ...] = ()) -> None:
        self._secrets = tuple(secret for secret in secrets if secret)
        self._labels: dict[str, str] = {}
        """Words already made safe: every answer names the same model and finish reason."""

    def hide(self, text: str) -> str:
        """`text` with every known secret replaced, and nothing else changed."""
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        return text

    def excerpt(self, text: str) -> str:
        """`text` on one line, without secrets or unprintable characters, at most about 200
        characters."""
        text = self.hide(text[:_SCAN_CHARS])
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub("[redacted]", text)
        text = " ".join("".join(" " if _unprintable(c) else c for c in text).split())
        if len(text) > _EXCERPT_CHARS:
            text = text[:_EXCERPT_CHARS].rstrip() + "…"
        return self._without_secret_start(text)

    def label(self, value: object) -> str:
        """A short vendor word (a finish reason, a model name) made safe; "" unless a string."""
        if not isinstance(value, str):
            return ""
        safe = self._labels.get(value)
        if safe is None:
            safe = self.excerpt(value)
            if len(self._labels) >= _LABELS_KEPT:  # a provider inventing words: start over
                self._labels.clear()
            self._labels[value] = safe
        return safe

    def _without_secret_start(self, text: str) -> str:
        """Hides the start of a known secret that a cut left at the end of `text`."""
        body = text.removesuffix("…")
        for secret in self._secrets:
            for length in range(len(secret) - 1, _MIN_SECRET_PIECE - 1, -1):
                if body.endswith(secret[:length]):
                    return body[:-length] + "[redacted]" + text[len(body) :]
        return text

    def __repr__(self) -> str:
        return f"<Redactor [{len(self._secrets)} secrets]>"


def error_for_status(
    status: int, detail: str, *, provider: str, retry_after: float | None
) -> ProviderError:
    """The domain error for an HTTP error answer; `detail` is the already redacted vendor text."""
    message = f"{provider}: HTTP {status}" + (f": {detail}" if detail else "")
    if status == 429 or (status == 503 and retry_after is not None):
        return RateLimited(message, provider=provider, retry_after=retry_after)
    if status in (401, 403):
        return AuthenticationFailed(message, provider=provider)
    # 408 is the server giving up on a slow request: worth another try.
    if status == 408 or 500 <= status < 600:
        return TransientError(message, provider=provider)
    if 400 <= status < 500:
        return InvalidRequest(message, provider=provider)
    return BadResponse(message, provider=provider)


def json_object(body: bytes) -> dict[str, Any] | None:
    """`body` parsed as a JSON object, or None when it is not one."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def error_message(body: bytes) -> str:
    """The vendor's own words from an error body, with its error code when it gives one.

    Reads error.message with error.code, .type or .status (OpenAI, Azure,
    Anthropic, Gemini), a plain string error (Ollama), detail, or message
    (Azure's gateway); a body that is not JSON is returned as text.
    """
    data = json_object(body)
    if data is None:
        # An HTML error page from a proxy: only its start is worth showing.
        return body[:_SCAN_CHARS].decode("utf-8", "replace")
    error = data.get("error", data.get("detail", data.get("message")))
    if isinstance(error, Mapping):
        message = _scalar(error.get("message"))
        # Gemini's numeric code repeats the HTTP status; its status name says more.
        code = next(
            (error[key] for key in ("code", "type", "status") if isinstance(error.get(key), str)),
            "",
        )
        return f"{message} ({code})" if code and message else message or code
    return _scalar(error)


def _scalar(value: object) -> str:
    """A string or number as text; "" for anything else, whose repr may be huge or nested
    deeper than repr can go."""
    if isinstance(value, str):
        return value
    return str(value) if isinstance(value, int | float) and not isinstance(value, bool) else ""


def token_count(value: object) -> int:
    """A token count from a usage block, or 0 when the server sent none or nonsense."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def retry_after_seconds(headers: httpx.Headers, *, now: float) -> float | None:
    """Seconds the standard headers ask us to wait: retry-after-ms, then Retry-After.

    Retry-After may be seconds or an HTTP date, measured against `now` in
    seconds since the epoch. None when neither header says.
    """
    if (millis := seconds(headers.get("retry-after-ms"))) is not None:
        return millis / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    if (plain := seconds(value)) is not None:
        return plain
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    # A date without a zone is GMT, as HTTP dates always are.
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return max(when.timestamp() - now, 0.0)


def limit_reset_seconds(
    headers: httpx.Headers,
    *,
    reset: str,
    remaining: str,
    kinds: tuple[str, ...],
    parse: Callable[[str], float | None],
) -> float | None:
    """The wait until the exhausted rate limit resets, from per-limit reset headers.

    `reset` and `remaining` are header name templates with one {} for each of
    `kinds`; `parse` turns a reset value into seconds from now. Limits whose
    remaining count is 0 are the ones that ran out; when no header says which,
    the longest reset is the safe answer.
    """
    resets: dict[str, float] = {}
    for kind in kinds:
        value = headers.get(reset.format(kind))
        if value is not None and (wait := parse(value.strip())) is not None:
            resets[kind] = wait
    exhausted = [k for k in resets if headers.get(remaining.format(k), "").strip() == "0"]
    return max([resets[k] for k in exhausted] or resets.values(), default=None)


def seconds(value: str | None) -> float | None:
    """A finite, non-negative number of seconds, or None when `value` is not one."""
    try:
        number = float(value) if value is not None else -1.0
    except ValueError:
        return None
    return number if 0 <= number < float("inf") else None
