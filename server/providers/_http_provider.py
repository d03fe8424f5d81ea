"""What every HTTP vendor provider shares: its identity, its exchange and the usual error mapping.

A vendor module subclasses `HttpProvider`, sets `kind`, hands its headers to
the constructor and keeps only what is its own: the request body, the
answer's parsing, any error details or retry hints of its own, and its health
endpoint.
"""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any, ClassVar

import httpx

from aiproc.server.core.errors import BadResponse, ProviderError
from aiproc.server.providers._exchange import Exchange, Reply, capped
from aiproc.server.providers._http_errors import (
    URL_USERINFO,
    Redactor,
    error_for_status,
    error_message,
    json_object,
    retry_after_seconds,
)
from aiproc.server.providers.base import Completion, CompletionRequest


class HttpProvider:
    """One vendor endpoint, called through an HTTP client it shares but does not own."""

    kind: ClassVar[str]
    """The vendor kind, e.g. "openai": each subclass sets it."""

    def __init__(
        self,
        name: str,
        base_url: str,
        model: str,
        context_window: int,
        http_client: httpx.AsyncClient,
        request_timeout: float | None,
        api_key: str | None,
        headers: dict[str, str],
    ) -> None:
        """The vendor's own constructor passes its arguments on in this order, with the headers
        every request carries. `api_key` never shows in an error; `request_timeout` caps each
        call's own timeout, in seconds, and None means no cap."""
        self._name = name
        self._base_url = base_url.rstrip("/")
        self._model = model
        self._context_window = context_window
        self._request_timeout = request_timeout
        self._headers = headers
        self._redactor = Redactor((api_key,) if api_key else ())
        self._exchange = Exchange(provider=name, client=http_client, redactor=self._redactor)

    @property
    def name(self) -> str:
        return self._name

    @property
    def model(self) -> str:
        return self._model

    @property
    def context_window(self) -> int:
        return self._context_window

    async def complete(self, request: CompletionRequest) -> Completion:
        """Runs one completion through the vendor's `_complete`; raises a ProviderError subclass
        on failure. What the answer says never holds the key, even from a server that echoes
        it, and its model name and finish reason are short and printable."""
        completion = await self._complete(request)
        try:
            # JSON escapes can spell lone surrogates, which no result can be stored or sent with.
            completion.content.encode("utf-8")
        except UnicodeEncodeError:
            raise BadResponse(
                f"{self._name}: the answer is not valid Unicode", provider=self._name
            ) from None
        return replace(
            completion,
            content=self._redactor.hide(completion.content),
            model=self._redactor.label(completion.model),
            finish_reason=self._redactor.label(completion.finish_reason),
        )

    async def _complete(self, request: CompletionRequest) -> Completion:
        """The vendor's own call and parsing: each subclass implements it."""
        raise NotImplementedError

    async def aclose(self) -> None:
        """Leaves the shared HTTP client open: its owner closes it."""

    def __repr__(self) -> str:
        base_url = URL_USERINFO.sub("***@", self._base_url)
        return f"<{type(self).__name__} name={self._name!r} {self._shown()} base_url={base_url!r}>"

    def _shown(self) -> str:
        """What `repr` shows between the name and the URL."""
        return f"model={self._model!r}"

    async def _post(self, url: str, payload: dict[str, Any], seconds: float) -> bytes:
        """POSTs `payload` within `seconds`, capped by `request_timeout`, and returns the body of
        a 2xx answer; raises the vendor's error for any other."""
        reply = await self._exchange.send(
            "POST",
            url,
            headers=self._headers,
            json=payload,
            seconds=capped(seconds, self._request_timeout),
        )
        if not reply.ok:
            raise self._error(reply)
        return reply.body

    async def _get_json(self, url: str, seconds: float) -> dict[str, Any]:
        """GETs `url` within `seconds` and returns its JSON object, e.g. a health check's list."""
        return await self._exchange.get_json(
            url, headers=self._headers, seconds=seconds, error=self._error
        )

    def _error(self, reply: Reply) -> ProviderError:
        """The domain error for an error answer, classified by status, with its retry hint."""
        return error_for_status(
            reply.status,
            self._redactor.excerpt(error_message(reply.body)),
            provider=self._name,
            retry_after=self._retry_after(reply.headers, now=time.time()),
        )

    def _retry_after(self, headers: httpx.Headers, *, now: float) -> float | None:
        """Seconds the answer asks to wait; vendors with their own rate-limit headers read them."""
        return retry_after_seconds(headers, now=now)


def answer_object(body: bytes, *, provider: str) -> dict[str, Any]:
    """The JSON object of a 2xx answer; raises BadResponse when the body is not one."""
    data = json_object(body)
    if data is None:
        raise BadResponse(f"{provider}: the answer is not a JSON object", provider=provider)
    return data
