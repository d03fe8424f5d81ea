"""A Provider for OpenAI-compatible chat completions.

OpenAI itself, vLLM, the llama.cpp server, Ollama's /v1 and the LiteLLM proxy
all speak this API.

HTTP outcomes become the domain errors of `aiproc.server.core.errors`:

    2xx with choices[0].message.content   Completion
    429, or 503 with a retry hint          RateLimited(retry_after)
    408, 5xx, network errors               TransientError
    read/write/pool timeout, deadline      ProviderTimeout
    401, 403                               AuthenticationFailed
    other 4xx                              InvalidRequest
    anything unparsable                    BadResponse
"""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import json
import re
import time
from collections.abc import Mapping
from typing import Any

import httpx

from aiproc.server.core.errors import (
    AuthenticationFailed,
    BadResponse,
    InvalidRequest,
    ProviderError,
    ProviderTimeout,
    RateLimited,
    TransientError,
)
from aiproc.server.core.models import TokenUsage
from aiproc.server.providers.base import Completion, CompletionRequest

# A chat completion is kilobytes; a body this large is a broken server or proxy.
_MAX_BODY_BYTES = 8 * 1024 * 1024
_EXCERPT_CHARS = 200
_URL_USERINFO = re.compile(r"(?<=//)[^/@\s]+@")
_SECRET_PATTERNS = (
    re.compile(r"\bsk-[A-Za-z0-9_*\-]{6,}"),
    re.compile(r"(?i)\bbearer\s+\S+"),
    _URL_USERINFO,
)
# OpenAI's reset durations: "1s", "6m0s", "20ms", "1h2m3.5s".
_RESET_DURATION = re.compile(
    r"^(?:(?P<h>\d+(?:\.\d+)?)h)?(?:(?P<m>\d+(?:\.\d+)?)m(?!s))?"
    r"(?:(?P<s>\d+(?:\.\d+)?)s)?(?:(?P<ms>\d+(?:\.\d+)?)ms)?$"
)
_RESET_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]+")


class OpenAIProvider:
    """One OpenAI-compatible endpoint, called through an HTTP client it shares but does not own."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str | None,
        model: str,
        context_window: int,
        http_client: httpx.AsyncClient,
        request_timeout: float | None = None,
    ) -> None:
        """`request_timeout` caps each call's own timeout, in seconds; None means no cap."""
        self._name = name
        self._base_url = base_url
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._model = model
        self._context_window = context_window
        self._client = http_client
        self._request_timeout = request_timeout
        self._secrets = (api_key,) if api_key else ()
        self._headers = {"Accept": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return "openai"

    @property
    def model(self) -> str:
        return self._model

    @property
    def context_window(self) -> int:
        return self._context_window

    async def complete(self, request: CompletionRequest) -> Completion:
        """POSTs one chat completion; raises a ProviderError subclass on any failure."""
        timeout = request.timeout
        if self._request_timeout is not None:
            timeout = min(timeout, self._request_timeout)
        payload = {
            "model": request.model or self._model,
            "messages": [{"role": m.role, "content": m.content} for m in request.messages],
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        try:
            # The transport's own timeouts are per phase; this bounds the whole call.
            async with asyncio.timeout(timeout):
                response, body = await self._post(payload, timeout)
        except TimeoutError:
            raise ProviderTimeout(
                f"{self._name}: no answer within {timeout:g}s", provider=self._name
            ) from None
        except httpx.TransportError as exc:
            raise self._network_error(exc) from exc
        if 200 <= response.status_code < 300:
            return self._completion(body, request)
        raise self._http_error(response.status_code, response.headers, body)

    async def aclose(self) -> None:
        """Leaves the shared HTTP client open: its owner closes it."""

    def __repr__(self) -> str:
        base_url = _URL_USERINFO.sub("***@", self._base_url)
        return f"<OpenAIProvider name={self._name!r} model={self._model!r} base_url={base_url!r}>"

    async def _post(self, payload: dict[str, Any], seconds: float) -> tuple[httpx.Response, bytes]:
        # No pool timeout: waiting for our own pool is bounded by the deadline
        # above and must not pass for the provider being slow or down.
        async with self._client.stream(
            "POST",
            self._url,
            json=payload,
            headers=self._headers,
            timeout=httpx.Timeout(seconds, pool=None),
        ) as response:
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > _MAX_BODY_BYTES:
                    raise BadResponse(
                        f"{self._name}: HTTP {response.status_code}: body larger than "
                        f"{_MAX_BODY_BYTES} bytes",
                        provider=self._name,
                    )
                chunks.append(chunk)
        return response, b"".join(chunks)

    def _network_error(self, exc: httpx.TransportError) -> ProviderError:
        detail = self._excerpt(str(exc)) or type(exc).__name__
        # ConnectTimeout is not here: httpx_aiohttp raises it for resets and refusals.
        if isinstance(exc, httpx.ReadTimeout | httpx.WriteTimeout | httpx.PoolTimeout):
            return ProviderTimeout(f"{self._name}: timed out: {detail}", provider=self._name)
        return TransientError(f"{self._name}: network error: {detail}", provider=self._name)

    def _http_error(self, status: int, headers: httpx.Headers, body: bytes) -> ProviderError:
        detail = self._excerpt(_error_message(body))
        message = f"{self._name}: HTTP {status}" + (f": {detail}" if detail else "")
        retry_after = retry_after_seconds(headers, now=time.time())
        if status == 429 or (status == 503 and retry_after is not None):
            return RateLimited(message, provider=self._name, retry_after=retry_after)
        if status in (401, 403):
            return AuthenticationFailed(message, provider=self._name)
        # 408 is the server giving up on a slow request: worth another try.
        if status == 408 or 500 <= status < 600:
            return TransientError(message, provider=self._name)
        if 400 <= status < 500:
            return InvalidRequest(message, provider=self._name)
        return BadResponse(message, provider=self._name)

    def _completion(self, body: bytes, request: CompletionRequest) -> Completion:
        data = _json_object(body)
        if data is None:
            raise BadResponse(f"{self._name}: the answer is not a JSON object", provider=self._name)
        choices = data.get("choices")
        choice = choices[0] if isinstance(choices, list) and choices else None
        if not isinstance(choice, dict):
            detail = self._excerpt(_error_message(body)) if "error" in data else ""
            raise BadResponse(
                f"{self._name}: the answer has no choices" + (f": {detail}" if detail else ""),
                provider=self._name,
            )
        message = choice.get("message")
        content = message.get("content") if isinstance(message, dict) else None
        finish_reason = choice.get("finish_reason")
        finish_reason = finish_reason if isinstance(finish_reason, str) else ""
        # An empty answer marked as success would be the reference's fake success.
        if not isinstance(content, str) or not content.strip():
            raise BadResponse(
                f"{self._name}: the answer has no content (finish_reason={finish_reason or '?'})",
                provider=self._name,
            )
        usage = data.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        model = data.get("model")
        return Completion(
            content=content,
            model=model if isinstance(model, str) and model else request.model or self._model,
            usage=TokenUsage(
                _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
            ),
            finish_reason=finish_reason,
        )

    def _excerpt(self, text: str) -> str:
        """`text` on one line, without secrets, at most about 200 characters."""
        for secret in self._secrets:
            text = text.replace(secret, "[redacted]")
        for pattern in _SECRET_PATTERNS:
            text = pattern.sub("[redacted]", text)
        text = " ".join(_CONTROL_CHARS.sub(" ", text).split())
        if len(text) > _EXCERPT_CHARS:
            text = text[:_EXCERPT_CHARS].rstrip() + "…"
        return text


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _error_message(body: bytes) -> str:
    """The vendor's own words from an error body: OpenAI's error.message (and code), or the text."""
    data = _json_object(body)
    if data is None:
        # An HTML error page from a proxy: only its start is worth showing.
        return body[: _EXCERPT_CHARS * 4].decode("utf-8", "replace")
    error = data.get("error", data.get("detail", data.get("message")))
    if isinstance(error, Mapping):
        message = str(error.get("message") or "")
        code = error.get("code") or error.get("type")
        return f"{message} ({code})" if code and message else message or str(code or "")
    return str(error) if error is not None else ""


def _count(value: object) -> int:
    """A token count from usage, or 0 when the server sent none or nonsense."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def retry_after_seconds(headers: httpx.Headers, *, now: float) -> float | None:
    """Seconds the server asks us to wait, or None when it does not say.

    Reads retry-after-ms, then Retry-After (seconds or an HTTP date, against
    `now` in seconds since the epoch), then OpenAI's x-ratelimit-reset-requests
    and x-ratelimit-reset-tokens.
    """
    if (millis := _seconds(headers.get("retry-after-ms"))) is not None:
        return millis / 1000
    if (value := headers.get("retry-after")) is not None:
        seconds = _seconds(value)
        if seconds is None:
            try:
                when = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            # A date without a zone is GMT, as HTTP dates always are.
            if when.tzinfo is None:
                when = when.replace(tzinfo=datetime.UTC)
            seconds = max(when.timestamp() - now, 0.0)
        return seconds
    resets = {
        kind: reset
        for kind in ("requests", "tokens")
        if (reset := _reset_duration(headers.get(f"x-ratelimit-reset-{kind}"))) is not None
    }
    # Wait for the limit that ran out; when the headers do not say which, the longer.
    exhausted = [k for k in resets if headers.get(f"x-ratelimit-remaining-{k}", "").strip() == "0"]
    candidates = [resets[k] for k in exhausted] or list(resets.values())
    return max(candidates, default=None)


def _seconds(value: str | None) -> float | None:
    """A non-negative number of seconds, or None when `value` is not one."""
    try:
        seconds = float(value) if value is not None else -1.0
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


def _reset_duration(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    if (plain := _seconds(value)) is not None:
        return plain
    match = _RESET_DURATION.match(value)
    if match is None or not value:
        return None
    return sum(
        float(amount) * _RESET_UNITS[unit] for unit, amount in match.groupdict().items() if amount
    )
