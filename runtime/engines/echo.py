"""A scripted fake engine: answers with the last user message (or a raw prompt), word by word, or with replies a test queued. No ML.

It goes through the same registry, replica class and ingress as the real engines, so the serving path can be tested
and benchmarked in seconds. Token = whitespace-separated word (a stand-in tokenizer that counts what it streams).
Like simonw/llm's MockModel, a test can `enqueue` the next replies (text pieces, exact deltas, or an exception to
raise mid-stream) and read `history`, the exact `GenerationRequest`s the engine received, so an HTTP test asserts
the generation parameters a request produced. `unhealthy` makes its health check fail with that reason.

Choices (`n`) advance together, one word each per step, so their deltas interleave as a batching engine's do.
Choice 0 always echoes the words as they are; when sampling (temperature > 0) choice i echoes them rotated left by
i words, so choices can be told apart; greedy choices are identical, as a real engine's are. Logprobs are
deterministic fakes: the p-th word (from 1) has logprob -p/10 and is the most likely token; the alternatives are
synthetic (`<alt1>`, `<alt2>` ...), each one nat less likely than the one before.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence

from runtime.engines.base import (
    Delta,
    Engine,
    FinishReason,
    GenerationRequest,
    TokenLogprob,
    TopLogprob,
    completion_budget,
)
from runtime.engines.stops import StopMatcher

DEFAULT_MAX_MODEL_LEN = 4096


def count_tokens(text: str) -> int:
    return len(text.split())


# One queued reply: text pieces (one delta each, then a "stop"), exact Deltas, or an exception raised at that point.
ReplyItem = str | Delta | BaseException


class EchoEngine(Engine):
    def __init__(self, config: object):
        super().__init__(config)
        self.history: list[GenerationRequest] = []  # every request received, in order
        self.unhealthy: str | None = None  # set: check_health fails with this reason
        self.running = 0
        self.shutdowns = 0  # how often shutdown() ran
        self._replies: deque[list[ReplyItem]] = deque()

    async def start(self) -> None:
        self.max_model_len = self.config.max_model_len or DEFAULT_MAX_MODEL_LEN
        self.delay = self.config.options.token_delay_s

    def enqueue(self, reply: Iterable[ReplyItem]) -> None:
        """Script the reply to the next request that finds the queue non-empty (first in, first out)."""
        self._replies.append(list(reply))

    async def check_health(self) -> None:
        if self.unhealthy is not None:
            raise RuntimeError(self.unhealthy)

    def load(self) -> dict[str, int]:
        return {"running": self.running}

    async def shutdown(self) -> None:
        self.shutdowns += 1

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        self.history.append(request)
        prompt_tokens = _prompt_tokens(request)
        reply = self._replies.popleft() if self._replies else None
        items = _scripted(reply, prompt_tokens) if reply is not None else self._echo(request, prompt_tokens)
        self.running += 1
        try:
            async for delta in items:
                yield delta
        finally:
            self.running -= 1
            await items.aclose()

    async def _echo(self, request: GenerationRequest, prompt_tokens: int) -> AsyncIterator[Delta]:
        params = request.params
        max_tokens = completion_budget(
            prompt_tokens, params.max_tokens, request.max_tokens_requested, self.max_model_len
        )
        words = _said(request).split()
        sampling = bool(params.temperature)
        choices = [
            _Choice(i, _rotate(words, i if sampling else 0), StopMatcher(params.stop), max_tokens, params.logprobs)
            for i in range(params.n)
        ]
        while not all(choice.done for choice in choices):
            if self.delay:
                await asyncio.sleep(self.delay)
            for choice in choices:
                if not choice.done:
                    for delta in choice.step(prompt_tokens):
                        yield delta


def _prompt_tokens(request: GenerationRequest) -> int:
    if isinstance(request.prompt, tuple):
        return len(request.prompt)
    if isinstance(request.prompt, str):
        return count_tokens(request.prompt)
    return sum(count_tokens(m["content"]) + 2 for m in request.messages)


def _said(request: GenerationRequest) -> str:
    """What to echo: the last user message, a raw prompt's text, or `t<id>` for each token id of one."""
    if isinstance(request.prompt, tuple):
        return " ".join(f"t{token_id}" for token_id in request.prompt)
    if isinstance(request.prompt, str):
        return request.prompt
    return next((m["content"] for m in reversed(request.messages) if m["role"] == "user"), "")


async def _scripted(reply: list[ReplyItem], prompt_tokens: int) -> AsyncIterator[Delta]:
    produced, finished = 0, False
    for item in reply:
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, Delta):
            finished = finished or item.finish_reason is not None
            yield item
            continue
        produced += 1
        yield Delta(item, prompt_tokens, produced)
    if not finished:
        yield Delta("", prompt_tokens, produced, "stop")


def _rotate(words: Sequence[str], by: int) -> list[str]:
    if not words:
        return []
    by %= len(words)
    return [*words[by:], *words[:by]]


class _Choice:
    """One choice's progress: a word per step, then a last delta with the held-back text and the finish reason."""

    def __init__(self, index: int, words: list[str], stops: StopMatcher, max_tokens: int, logprobs: int | None):
        self.index = index
        self.words = words
        self.stops = stops
        self.max_tokens = max_tokens
        self.logprobs = logprobs
        self.produced = 0
        self.done = False

    def step(self, prompt_tokens: int) -> list[Delta]:
        out: list[Delta] = []
        if self._can_continue():
            token = self.words[self.produced] if self.produced == 0 else " " + self.words[self.produced]
            logprobs = self._logprobs(token, self.produced)
            self.produced += 1
            text = self.stops.feed(token)
            if text or logprobs:
                out.append(Delta(text, prompt_tokens, self.produced, index=self.index, logprobs=logprobs))
            if self._can_continue():
                return out
        out.append(Delta(self.stops.flush(), prompt_tokens, self.produced, self._finish(), index=self.index))
        self.done = True
        return out

    def _can_continue(self) -> bool:
        return not self.stops.stopped and self.produced < min(len(self.words), self.max_tokens)

    def _finish(self) -> FinishReason:
        # "length" only when words were left to say: an echo that ends exactly at max_tokens has said everything.
        cut_short = not self.stops.stopped and self.produced < len(self.words)
        return "length" if cut_short else "stop"

    def _logprobs(self, token: str, position: int) -> tuple[TokenLogprob, ...]:
        if self.logprobs is None:
            return ()
        logprob = -(position + 1) / 10
        top = [TopLogprob(token, logprob, _utf8(token))][: self.logprobs]
        top += [TopLogprob(f"<alt{r}>", logprob - r, _utf8(f"<alt{r}>")) for r in range(1, self.logprobs)]
        return (TokenLogprob(token, logprob, _utf8(token), tuple(top)),)


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8"))
