"""What a provider hands back is safe to store and show, whatever the server answered."""

from __future__ import annotations

import json

import httpx
import pytest

from aiproc.server.core.errors import BadResponse
from aiproc.server.fakes.openai_server import FakeOpenAIServer, FakeReply
from aiproc.server.providers.openai import OpenAIProvider
from tests.providers.vendor_support import make_request

KEY = "sk-proj-answerKEY0123456789"


def provider(fake: FakeOpenAIServer, client: httpx.AsyncClient) -> OpenAIProvider:
    return OpenAIProvider(
        name="p", base_url=fake.base_url, api_key=KEY, model="m", context_window=8192,
        http_client=client,
    )  # fmt: skip


def answer(content: str, **extra: object) -> FakeReply:
    choice = {"message": {"content": content}, "finish_reason": extra.pop("finish", "stop")}
    return FakeReply(body={"choices": [choice], **extra})


async def test_an_answer_echoing_the_key_does_not_carry_it(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    fake.enqueue(answer(f"Your key is {KEY}.", model=f"gpt {KEY}\x1b[2J", finish=f"{KEY}" * 50))
    completion = await provider(fake, client).complete(make_request())
    assert completion.content == "Your key is [redacted]."
    assert completion.model == "gpt [redacted] [2J"
    assert KEY not in completion.finish_reason
    assert len(completion.finish_reason) <= 201


async def test_an_answer_with_a_lone_surrogate_is_a_bad_response(
    fake: FakeOpenAIServer, client: httpx.AsyncClient
) -> None:
    # Valid JSON; its escape spells half a UTF-16 pair, which is no Unicode text.
    body = json.dumps({"choices": [{"message": {"content": "ok \\ud800"}}]}).replace("\\\\", "\\")
    fake.enqueue(FakeReply(body=body.encode()))
    with pytest.raises(BadResponse, match="not valid Unicode"):
        await provider(fake, client).complete(make_request())
