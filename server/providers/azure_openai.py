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

from aiproc.server.providers._http_provider import HttpProvider
from aiproc.server.providers.base import Completion, CompletionRequest
from aiproc.server.providers.openai import chat_messages, openai_retry_after, parse_chat_completion

DEFAULT_API_VERSION = "2024-10-21"


class AzureOpenAIProvider(HttpProvider):
    """One Azure OpenAI deployment, called through an HTTP client it shares but does not own."""

    kind = "azure_openai"

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
        headers = {"api-key": api_key, "Accept": "application/json"}
        super().__init__(
            name, base_url, model, context_window, http_client, request_timeout, api_key, headers
        )
        self._deployment = deployment or model
        query = {"api-version": api_version or DEFAULT_API_VERSION}
        deployment_path = quote(self._deployment, safe="")
        self._chat_url = str(
            httpx.URL(
                f"{self._base_url}/openai/deployments/{deployment_path}/chat/completions",
                params=query,
            )
        )
        self._models_url = str(httpx.URL(f"{self._base_url}/openai/models", params=query))

    @property
    def deployment(self) -> str:
        return self._deployment

    async def _complete(self, request: CompletionRequest) -> Completion:
        """POSTs one chat completion to the deployment; raises a ProviderError subclass on failure.

        A task naming its own model is still answered by this deployment: on
        Azure a model is reached through the deployment that serves it.
        """
        payload = {
            "messages": chat_messages(request),
            "max_tokens": request.max_tokens,
            "temperature": request.temperature,
        }
        body = await self._post(self._chat_url, payload, request.timeout)
        return parse_chat_completion(
            body, provider=self._name, default_model=self._model, redactor=self._redactor
        )

    async def check_health(self, timeout: float) -> None:  # noqa: ASYNC109
        """GETs the resource's model list, which is free; raises a ProviderError if it fails."""
        await self._get_json(self._models_url, timeout)

    def _shown(self) -> str:
        return f"deployment={self._deployment!r}"

    def _retry_after(self, headers: httpx.Headers, *, now: float) -> float | None:
        return openai_retry_after(headers, now=now)
