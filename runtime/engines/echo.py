"""A scripted fake engine: answers with the last user message, word by word. No ML library.

It goes through the same registry, deployment and ingress as the real engines, so the serving path can be tested
and benchmarked in seconds. Token = whitespace-separated word (a stand-in tokenizer that counts what it streams).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from runtime.engines.base import Delta, Engine, GenerationRequest, context_length_error
from runtime.engines.stops import StopMatcher

DEFAULT_MAX_MODEL_LEN = 4096


def count_tokens(text: str) -> int:
    return len(text.split())


class EchoEngine(Engine):
    async def start(self) -> None:
        self.max_model_len = self.config.max_model_len or DEFAULT_MAX_MODEL_LEN
        self.delay = float(self.config.options.get("token_delay_s", 0.0))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        prompt_tokens = sum(count_tokens(m["content"]) + 2 for m in request.messages)
        params = request.params
        room = self.max_model_len - prompt_tokens
        if room <= 0 or (request.max_tokens_requested and params.max_tokens and params.max_tokens > room):
            raise context_length_error(prompt_tokens, params.max_tokens, self.max_model_len)
        max_tokens = min(params.max_tokens or room, room)
        last_user = next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")
        words = last_user.split()  # sampling parameters change nothing: the echo is deterministic
        stops = StopMatcher(params.stop)
        produced = 0
        finish = "stop"
        for i, word in enumerate(words):
            if produced >= max_tokens:
                finish = "length"
                break
            if self.delay:
                await asyncio.sleep(self.delay)
            produced += 1
            text = stops.feed(word if i == 0 else " " + word)
            if text:
                yield Delta(text, prompt_tokens, produced)
            if stops.stopped:
                break
        tail = stops.flush()
        yield Delta(tail, prompt_tokens, produced, finish_reason=finish)
