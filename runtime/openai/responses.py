"""The Responses API (POST /v1/responses) over the chat pipeline. Being written: see issue 13."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from runtime.openai.errors import APIError
from runtime.openai.service import ChatCompletions, Exchange, Reply


class Responses:
    def __init__(self, chat: ChatCompletions):
        self.chat = chat

    async def create(self, read_body: Callable[[], Awaitable[bytes]], exchange: Exchange) -> Reply:
        raise APIError(501, "the Responses API is not served yet")
