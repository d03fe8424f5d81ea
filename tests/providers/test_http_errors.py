from __future__ import annotations

import json

import httpx
import pytest

from aiproc.server.core.errors import (
    AuthenticationFailed,
    BadResponse,
    InvalidRequest,
    RateLimited,
    TransientError,
)
from aiproc.server.providers._http_errors import (
    Redactor,
    error_for_status,
    error_message,
    limit_reset_seconds,
    token_count,
)


@pytest.mark.parametrize(
    ("status", "retry_after", "error_type"),
    [
        (429, None, RateLimited),
        (503, 2.0, RateLimited),
        (503, None, TransientError),
        (529, None, TransientError),
        (529, 3.0, TransientError),
        (408, None, TransientError),
        (401, None, AuthenticationFailed),
        (403, None, AuthenticationFailed),
        (400, None, InvalidRequest),
        (404, None, InvalidRequest),
        (413, None, InvalidRequest),
        (422, None, InvalidRequest),
        (304, None, BadResponse),
    ],
)
def test_statuses_map_to_the_domain_tree(
    status: int, retry_after: float | None, error_type: type[Exception]
) -> None:
    error = error_for_status(status, "detail", provider="p", retry_after=retry_after)

    assert type(error) is error_type
    assert str(error) == f"p: HTTP {status}: detail"
    assert error.provider == "p"
    if isinstance(error, RateLimited):
        assert error.retry_after == retry_after


OPENAI = {"error": {"message": "bad", "type": "invalid_request_error", "code": None}}
AZURE_FILTER = {"error": {"message": "filtered", "code": "content_filter", "status": 400}}
AZURE_GATEWAY = {"statusCode": 401, "message": "Access denied"}
ANTHROPIC = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
GEMINI = {"error": {"code": 429, "message": "quota", "status": "RESOURCE_EXHAUSTED"}}
OLLAMA = {"error": "model 'x' not found"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (OPENAI, "bad (invalid_request_error)"),
        (AZURE_FILTER, "filtered (content_filter)"),
        (AZURE_GATEWAY, "Access denied"),
        (ANTHROPIC, "Overloaded (overloaded_error)"),
        # Gemini's numeric code repeats the status, so its name is shown instead.
        (GEMINI, "quota (RESOURCE_EXHAUSTED)"),
        (OLLAMA, "model 'x' not found"),
        ({"detail": "Not Found"}, "Not Found"),
        ({"something": "else"}, ""),
    ],
)
def test_error_messages_are_read_from_each_vendor_shape(body: object, expected: str) -> None:
    assert error_message(json.dumps(body).encode()) == expected


def test_a_non_json_error_is_its_text() -> None:
    assert error_message(b"<h1>502 Bad Gateway</h1>") == "<h1>502 Bad Gateway</h1>"


def test_the_redactor_hides_the_key_and_key_shaped_strings() -> None:
    redactor = Redactor(("plain-secret-42", ""))
    text = (
        "key plain-secret-42, anthropic sk-ant-api03-abcdefgh, google "
        "AIzaSyA1234567890abcdefghijklmnop, Bearer tok.en, https://user:pw@host/x\n"
    )

    excerpt = redactor.excerpt(text)

    assert excerpt == (
        "key [redacted], anthropic [redacted], google [redacted], [redacted] "
        "https://[redacted]host/x"
    )
    assert "plain-secret-42" not in repr(redactor)


def test_the_longest_exhausted_limit_decides_the_wait() -> None:
    headers = httpx.Headers(
        {
            "reset-a": "5",
            "remaining-a": "0",
            "reset-b": "50",
            "remaining-b": "10",
            "reset-c": "7",
            "remaining-c": "0",
        }
    )

    wait = limit_reset_seconds(
        headers, reset="reset-{}", remaining="remaining-{}", kinds=("a", "b", "c"), parse=float
    )

    assert wait == 7.0


def test_without_an_exhausted_limit_the_longest_reset_is_safe() -> None:
    headers = httpx.Headers({"reset-a": "5", "reset-b": "nonsense", "remaining-a": "3"})

    def parse(value: str) -> float | None:
        return float(value) if value.isdigit() else None

    assert (
        limit_reset_seconds(
            headers, reset="reset-{}", remaining="remaining-{}", kinds=("a", "b"), parse=parse
        )
        == 5.0
    )
    assert (
        limit_reset_seconds(
            httpx.Headers(), reset="reset-{}", remaining="remaining-{}", kinds=("a",), parse=parse
        )
        is None
    )


@pytest.mark.parametrize(("value", "count"), [(12, 12), (0, 0), (-1, 0), (True, 0), ("3", 0)])
def test_token_counts_are_non_negative_integers_or_zero(value: object, count: int) -> None:
    assert token_count(value) == count


SECRET = "Zq7-unusual-key-5f1e9c0d2b"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Echoed headers and query strings: the value after a key-named field goes.
        ('{"x-api-key": "other-key-123", "n": 1}', '{"[redacted]", "n": 1}'),
        ("api_key=abc123&model=m", "[redacted]&model=m"),
        ("authorization: Basic dXNlcjpwdw==", "[redacted]"),
        ("token=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.sig", "[redacted]"),
        ("see eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.c2ln", "see [redacted]"),
        # Words that only look like those fields stay.
        ("max_tokens: 4096 is too many tokens", "max_tokens: 4096 is too many tokens"),
        # Bidi overrides, zero-width and C1 controls could make a line show something else.
        ("evil\u202etxt.exe\u200b\x85\x9bok", "evil txt.exe ok"),
        ("line\u2028break\r\nand\x00nul", "line break and nul"),
    ],
)
def test_excerpts_hide_credential_fields_and_unprintable_characters(
    text: str, expected: str
) -> None:
    assert Redactor().excerpt(text) == expected


def test_a_secret_cut_by_the_scan_limit_does_not_show_its_start() -> None:
    redactor = Redactor((SECRET,))
    body = (" " * 4090 + SECRET).encode()  # the first 4096 characters hold 6 of the secret
    excerpt = redactor.excerpt(error_message(body))
    assert excerpt == "[redacted]"


def test_huge_and_deeply_nested_error_bodies_are_cheap_and_short() -> None:
    nested = b'{"error": ' + b"[" * 900 + b"]" * 900 + b"}"
    assert error_message(nested) == ""
    assert error_message(b'{"error": {"message": {"deep": [1, 2]}, "type": "t"}}') == "t"
    huge = b'{"error": {"message": "' + b"A" * (8 * 1024 * 1024) + b'"}}'
    excerpt = Redactor((SECRET,)).excerpt(error_message(huge))
    assert len(excerpt) <= 201


def test_labels_are_strings_or_nothing() -> None:
    redactor = Redactor((SECRET,))
    assert redactor.label(f"stop {SECRET}") == "stop [redacted]"
    assert redactor.label({"nested": ["x"]}) == ""
    assert redactor.label("r" * 5000) == "r" * 200 + "…"


def test_labels_remembered_are_the_same_safe_words() -> None:
    redactor = Redactor((SECRET,))
    words = [f"model-{n} {SECRET}" for n in range(1000)]  # more than it remembers

    first = [redactor.label(word) for word in words]
    again = [redactor.label(word) for word in words]

    assert first == again == [f"model-{n} [redacted]" for n in range(1000)]
