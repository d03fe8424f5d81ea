"""Answers that are no answer at all, for the fake's `garbage` fault: one drawn per request.

Every kind is something a broken server, proxy or middlebox has been seen to
send, and none is a valid answer in any dialect:

    bytes        random bytes under a random status and content type
    utf8         a JSON answer holding bytes that are not UTF-8
    shape        JSON of the wrong shape: a scalar, a list, the right keys holding the wrong
                 types, or the dialect's own answer with every string made a non-string
    deep         JSON nested hundreds to a hundred thousand levels deep
    huge         a JSON string of megabytes, sometimes past any sane body limit
    status       a status no API uses (1xx then nothing, 3xx without Location, 6xx-9xx, 204
                 with a body) or an error status whose Retry-After is nonsense
    line         a status line or header that is not HTTP
    truncated    Content-Length larger than what is sent, then the connection closes
    chunked      chunked transfer encoding with a broken chunk size
    encoding     Content-Encoding: gzip (or br, or unknown) over bytes that are not in it
    reset        the connection is aborted before any answer

The draws come from the `random.Random` the caller passes, so a seeded run
answers the same sequence again.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from aiohttp import web

__all__ = ["KINDS", "answer"]

_JSON = "application/json"
_NON_STRINGS: tuple[Any, ...] = (0, -1, 1.5, None, True, [], {}, ["x"], {"x": "y"})
_CONTENT_TYPES = (_JSON, "text/plain", "application/octet-stream", "text/html; charset=utf-8")
_SHAPES: tuple[Any, ...] = (
    [],
    "text",
    42,
    None,
    True,
    {},
    {"choices": "x"},
    {"choices": [1]},
    {"choices": [{"message": "x"}]},
    {"choices": [{"message": {"content": 5}}], "model": ["m"], "usage": "lots"},
    {"choices": [{"message": {"content": ""}, "finish_reason": {"why": ["nested"]}}]},
    {"content": {"text": 1}, "stop_reason": 7},
    {"content": [{"type": "text", "text": None}]},
    {"candidates": [{"content": {"parts": "x"}}], "promptFeedback": {"blockReason": []}},
    {"candidates": [{"content": {"parts": [{"text": 3}]}, "finishReason": None}]},
    {"message": ["x"], "done_reason": {"x": 1}},
    {"error": {"message": {"nested": [[]]}, "type": ["t"]}},
    {"error": ["a", {"b": None}]},
)


def _bytes(rng: random.Random, success: bytes) -> web.StreamResponse:
    status = rng.choice((200, 201, 299, 400, 404, 418, 500, 502))
    body = rng.randbytes(rng.choice((0, 1, 17, 1000, 100_000)))
    return web.Response(
        status=status, body=body, headers={"Content-Type": rng.choice(_CONTENT_TYPES)}
    )


def _utf8(rng: random.Random, success: bytes) -> web.StreamResponse:
    bad = rng.choice((b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80"))
    body = b'{"choices": [{"message": {"role": "assistant", "content": "' + bad + b'"}}]}'
    return _json_bytes(rng.choice((200, 400, 500)), body)


def _shape(rng: random.Random, success: bytes) -> web.StreamResponse:
    value = rng.choice(_SHAPES) if rng.random() < 0.6 else _mangled(json.loads(success), rng)
    return _json_bytes(200, json.dumps(value).encode())


def _mangled(value: Any, rng: random.Random) -> Any:
    """`value` with every string replaced by something that is not a string."""
    if isinstance(value, str):
        return rng.choice(_NON_STRINGS)
    if isinstance(value, list):
        return [_mangled(item, rng) for item in value]
    if isinstance(value, dict):
        return {key: _mangled(item, rng) for key, item in value.items()}
    return value


def _deep(rng: random.Random, success: bytes) -> web.StreamResponse:
    depth = rng.choice((200, 900, 5000, 100_000))
    key = rng.choice((b"choices", b"error", b"candidates", b"message"))
    body = b'{"' + key + b'": ' + b"[" * depth + b"]" * depth + b"}"
    return _json_bytes(rng.choice((200, 400, 500)), body)


def _huge(rng: random.Random, success: bytes) -> web.StreamResponse:
    # Mostly under the 8 MiB a provider reads, sometimes over it.
    size = rng.choice((1024 * 1024, 3 * 1024 * 1024, 9 * 1024 * 1024))
    key = rng.choice((b"error", b"choices", b"detail"))
    body = b'{"' + key + b'": "' + b"A" * size + b'"}'
    return _json_bytes(rng.choice((200, 500)), body)


def _status(rng: random.Random, success: bytes) -> bytes | web.StreamResponse:
    choice = rng.randrange(5)
    if choice == 0:
        return rng.choice((b"100 Continue", b"102 Processing", b"103 Early Hints")) + b"\r\n\r\n"
    if choice == 1:
        return web.Response(status=rng.choice((301, 302, 303, 307, 308)), body=b"moved")
    if choice == 2:
        code = rng.choice((b"600", b"799", b"999"))
        return code + b" Odd\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    if choice == 3:
        return b"204 No Content\r\nContent-Length: 5\r\n\r\nhello"
    # An error status whose retry hint cannot be read as a number of seconds.
    hint = rng.choice(("soon", "-5", "1e999", "nan", "inf", "Thu, 99 Foo 2024 25:61:61 GMT", ""))
    return web.Response(
        status=rng.choice((429, 503)),
        body=b'{"error": {"message": "slow down"}}',
        headers={"Content-Type": _JSON, "Retry-After": hint, "retry-after-ms": hint},
    )


def _line(rng: random.Random, success: bytes) -> bytes:
    return rng.choice(
        (
            b"abc OK\r\n\r\n",
            b"NOT HTTP AT ALL\r\n\r\n",
            b"200 OK\r\nno colon in this header\r\n\r\n{}",
            b"200 OK\r\nX-Big: " + b"x" * 70_000 + b"\r\n\r\n{}",
            b"200 OK\r\nContent-Length: -4\r\n\r\n{}",
        )
    )


def _truncated(rng: random.Random, success: bytes) -> bytes:
    sent = success[: rng.randrange(len(success))]
    length = str(len(success) + rng.randrange(1, 10_000)).encode()
    return (
        b"200 OK\r\nContent-Type: application/json\r\nContent-Length: "
        + length
        + b"\r\n\r\n"
        + sent
    )


def _chunked(rng: random.Random, success: bytes) -> bytes:
    size = rng.choice((b"zz", b"-1", b"ffffffffffffffffff", b"10"))
    return b"200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + size + b"\r\nabc\r\n"


def _encoding(rng: random.Random, success: bytes) -> web.StreamResponse:
    # Bytes that are not in that coding; a client that does not know the coding (br, zstd)
    # passes them on as they are, and they are not an answer either.
    coding = rng.choice(("gzip", "deflate", "br", "zstd", "x-unknown"))
    response = _json_bytes(200, rng.randbytes(rng.choice((1, 64, 4096))))
    response.headers["Content-Encoding"] = coding
    return response


def _reset(rng: random.Random, success: bytes) -> None:
    return None


def _json_bytes(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, headers={"Content-Type": _JSON})


Answer = bytes | web.StreamResponse | None
"""A response to send; bytes after "HTTP/1.1 " written raw, then the connection closed; or
None to abort the connection."""

KINDS: dict[str, Callable[[random.Random, bytes], Answer]] = {
    "bytes": _bytes,
    "utf8": _utf8,
    "shape": _shape,
    "deep": _deep,
    "huge": _huge,
    "status": _status,
    "line": _line,
    "truncated": _truncated,
    "chunked": _chunked,
    "encoding": _encoding,
    "reset": _reset,
}


def answer(rng: random.Random, success: bytes) -> tuple[str, Answer]:
    """One garbage answer and its kind; `success` is the dialect's valid answer, as bytes."""
    kind = rng.choice(sorted(KINDS))
    return kind, KINDS[kind](rng, success)
