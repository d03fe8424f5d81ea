"""A Provider for an Azure OpenAI deployment's chat completions.

POST {base_url}/openai/deployments/{deployment}/chat/completions?api-version=…
with the key in the `api-key` header. The deployment, not the body, chooses
the model, so no `model` field is sent. Answers, errors and retry hints are
OpenAI's and are read by the same code; Azure's own outcomes:

    400 with code content_filter (the prompt was filtered)   InvalidRequest
    2xx with finish_reason content_filter and no content     InvalidRequest
    401 {"statusCode": 401, "message": …} from the gateway   AuthenticationFailed
"""

from __future__ import annotations

from urllib.parse import quote

import httpx

from aiproc.server.core.errors import ProviderError
from aiproc.server.providers._exchange import Exchange, Reply, capped
from aiproc.server.providers._http_errors import URL_USERINFO, Redactor
from aiproc.server.providers.base import Completion, CompletionRequest
from aiproc.server.providers.openai import chat_messages, openai_error, parse_chat_completion

DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIProvider:
    """One Azure OpenAI deployment, called through an HTTP client it shares but does not own."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str,
        deployment: str,
        model: str,
        context_window: int,
        http_client: httpx.AsyncClient,
        api_version: str = DEFAULT_API_VERSION,
        request_timeout: float | None = None,
    ) -> None:
        """`base_url` is the resource endpoint, e.g. https://NAME.openai.azure.com.

        `deployment` names the deployment in the URL; `model` is what the
        deployment runs, used for the context window and when Azure does not
        say. `request_timeout` caps each call's own timeout, in seconds.
        """
        self._name = name
        self._base_url = base_url.rstrip("/")
        self._deployment = deployment or model
        self._model = model
        self._context_window = context_window
        self._request_timeout = request_timeout
        query = {"api-version": api_version or DEFAULT_API_VERSION}
        deployment_path = quote(self._deployment, safe="")
        self._chat_url = str(
            httpx.URL(
                f"{self._base_url}/openai/deployments/{deployment_path}/chat/completions",
                params=query,
            )
        )
        self._models_url = str(httpx.URL(f"{self._base_url}/openai/models", params=query))
        self._redactor = Redactor((api_key,))
        self._exchange = Exchange(provider=name, client=http_client, redactor=self._redactor)
        self._headers = {"api-key": api_key, "Accept": "application/json"}

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> str:
        return "azure_openai"

    @property
    def model(self) -> str:
        return self._model

    @property
    def context_window(self) -> int:
        return self._context_window

    @property
    def deployment(self) -> str:
        return self._deployment

    async def complete(self, request: CompletionRequest) -> Completion:
        """POSTs one chat completion to the deployment; raises a ProviderError subclass on failure.

        A task naming its own model is still answered by this deployment: on
        Azure a model is reached through the deployment that serves it.
        """
        payload = {
            "messages": chat_messages(request),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        reply = await self._exchange.send(
            "POST",
            self._chat_url,
            headers=self._headers,
            json=payload,
            seconds=capped(request.timeout, self._request_timeout),
        )
        if not reply.ok:
            raise self._error(reply)
        return parse_chat_completion(
            reply.body, provider=self._name, default_model=self._model, redactor=self._redactor
        )

    async def check_health(self, timeout: float) -> None:  # noqa: ASYNC109
        """GETs the resource's model list, which is free; raises a ProviderError if it fails."""
        await self._exchange.get_json(
            self._models_url, headers=self._headers, seconds=timeout, error=self._error
        )

    async def aclose(self) -> None:
        """Leaves the shared HTTP client open: its owner closes it."""

    def __repr__(self) -> str:
        base_url = URL_USERINFO.sub("***@", self._base_url)
        return (
            f"<AzureOpenAIProvider name={self._name!r} deployment={self._deployment!r} "
            f"base_url={base_url!r}>"
        )

    def _error(self, reply: Reply) -> ProviderError:
        return openai_error(reply, provider=self._name, redactor=self._redactor)
