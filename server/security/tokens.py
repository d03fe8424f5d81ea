"""API tokens: how one is made, and the hash the config keeps instead of it.

A token is `aiproc_` and 43 characters of URL-safe base64: 256 random bits. The
prefix makes a leaked token easy to recognise (e.g. by secret scanners). The
server never stores a token, only `sha256:<hex>` of it; see `ApiKeyConfig` for
why a fast hash is the right one for random tokens.
"""

from __future__ import annotations

import hashlib
import secrets

from aiproc.server.config import KEY_HASH_PREFIX

TOKEN_PREFIX = "aiproc_"
TOKEN_BYTES = 32


def new_token() -> str:
    """A fresh random API token."""
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def token_digest(token: str) -> bytes:
    """The SHA-256 of a token as sent (its UTF-8 bytes)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def hash_token(token: str) -> str:
    """The `sha256:<hex>` form the config stores for a token."""
    return KEY_HASH_PREFIX + token_digest(token).hex()
