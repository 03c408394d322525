"""POST /v1/completions, the legacy text completions: a raw prompt in, its continuation out (no chat template).

A request may hold several prompts: each becomes one engine request with `n` choices, and the choices of prompt
`p` are numbered `p * n + i`, as OpenAI and vLLM number them. The usage sums every prompt's tokens. The stream is
vLLM's legacy chunk sequence: `text_completion` chunks naming their choice, a chunk with each choice's
finish_reason, with `stream_options.include_usage` a last chunk with `choices: []` and the usage, on a failure an
error event, always `data: [DONE]`. Logprobs take the legacy shape (parallel lists of tokens, logprobs, the top
tokens as a dict and text offsets). Pure: no FastAPI, no Ray.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace

from runtime.engines.base import GenerationRequest, StreamError, TokenLogprob
from runtime.model_api import StreamItem
from runtime.openai.convert import to_completion_requests
from runtime.openai.errors import APIError
from runtime.openai.metering import model_label
from runtime.openai.protocol import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
)
from runtime.openai.service import ChatCompletions, Exchange, Reply, estimate_tokens, parse_body
from runtime.openai.streaming import DONE, MIN_LOGPROB, ResponseIds, Tally, error_event, sse, usage_of


class Completions:
    def __init__(self, chat: ChatCompletions):
        self.chat = chat  # the models, their cards and admission gates

    async def create(self, read_body: Callable[[], Awaitable[bytes]], exchange: Exchange) -> Reply:
        body = parse_body(await read_body(), CompletionRequest, "a completions request")
        meter = exchange.meter
        meter.model, meter.stream = model_label(body.model), bool(body.stream)
        if body.stream_options is not None and not body.stream:
            raise APIError(400, "stream_options is only allowed with stream=true", param="stream_options")
        card = self.chat.card(body.model, "generate", exchange.caller)
        request_id = f"cmpl-{uuid.uuid4().hex}"
        meter.request_id = request_id
        generations = to_completion_requests(body, request_id, card)
        n = generations[0].params.n
        meter.choices = n * len(generations)
        params = generations[0].params
        await self.chat.charge(card, exchange, estimate_tokens(body.prompt, params, card, len(generations)))
        self.chat.enter_gate(card, exchange)  # one place for the request, however many prompts it holds
        prompts = _Prompts([self.chat.generate(card, g) for g in generations], n)
        try:
            await prompts.first_items()  # every prompt's status before any byte
        except APIError as exc:
            meter.error = StreamError("invalid_request" if exc.status < 500 else "internal", exc.message, exc.param)
            await prompts.close()
            raise
        except BaseException:
            await prompts.close()
            raise
        items = meter.watch(prompts.items())
        ids = ResponseIds(id=request_id, created=int(time.time()), model=card.id)
        echoes = _echoes(body, generations)
        logprobs = body.logprobs is not None
        if body.stream:
            include_usage = bool(body.stream_options and body.stream_options.include_usage)
            writer = LegacyChunks(ids, include_usage, logprobs)
            return Reply(request_id, events=stream_completion(items, writer, echoes), release=prompts.close)
        return Reply(request_id, completion=await collect_completion(items, ids, echoes, logprobs))


def _echoes(body: CompletionRequest, generations: Sequence[GenerationRequest]) -> list[str]:
    """Each choice's echoed prompt ("" without echo), by choice index."""
    n = generations[0].params.n
    return [str(g.prompt) if body.echo else "" for g in generations for _ in range(n)]


class _Prompts:
    """The generations of a request's prompts as one stream. Each is read by a task of its own from the start, so no
    prompt waits for a replica slot that only the reading of another prompt would free. Choice indexes are renumbered
    (prompt p's choice i is p * n + i) and prompt_tokens summed over the prompts seen so far (complete once every
    choice finished). An error ends the stream; closing it stops every generation."""

    def __init__(self, streams: list[AsyncIterator[StreamItem]], n: int):
        self.streams = streams
        self.n = n
        self.queue: asyncio.Queue[tuple[int, StreamItem | None]] = asyncio.Queue()
        self.tasks = [asyncio.create_task(self._pump(p, s)) for p, s in enumerate(streams)]
        self.buffer: list[tuple[int, StreamItem]] = []
        self.running = len(streams)
        self.prompt_tokens: dict[int, int] = {}

    async def _pump(self, p: int, stream: AsyncIterator[StreamItem]) -> None:
        try:
            async for item in stream:
                await self.queue.put((p, item))
        finally:
            await self.queue.put((p, None))

    async def first_items(self) -> None:
        """Wait for every prompt's first item; one that fails or sends nothing raises APIError (nothing sent yet)."""
        started: set[int] = set()
        while len(started) < len(self.streams):
            p, item = await self.queue.get()
            if item is None:
                self.running -= 1
                if p not in started:
                    raise APIError(500, "the model returned nothing; try again")
                continue
            if isinstance(item, StreamError) and p not in started:
                raise APIError.from_stream_error(item)
            started.add(p)
            self.buffer.append((p, item))

    async def items(self) -> AsyncIterator[StreamItem]:
        try:
            for p, item in self.buffer:
                yield self._renumbered(p, item)
                if isinstance(item, StreamError):
                    return
            while self.running:
                p, item = await self.queue.get()
                if item is None:
                    self.running -= 1
                    continue
                yield self._renumbered(p, item)
                if isinstance(item, StreamError):
                    return
        finally:
            await self.close()

    def _renumbered(self, p: int, item: StreamItem) -> StreamItem:
        if isinstance(item, StreamError):
            return item
        self.prompt_tokens[p] = item.prompt_tokens
        return replace(item, index=p * self.n + item.index, prompt_tokens=sum(self.prompt_tokens.values()))

    async def close(self) -> None:
        """Stop every prompt's generation (idempotent)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await asyncio.gather(*(s.aclose() for s in self.streams), return_exceptions=True)


class LegacyChunks:
    """Chunk text of one legacy completions stream."""

    def __init__(self, ids: ResponseIds, include_usage: bool, logprobs: bool):
        self.ids = ids
        self.include_usage = include_usage
        self.logprobs = logprobs

    def _chunk(self, choices: list[dict], usage: dict | None = None) -> str:
        data: dict = {"id": self.ids.id, "object": "text_completion", "created": self.ids.created,
                      "model": self.ids.model, "choices": choices}  # fmt: skip
        if self.include_usage:
            data["usage"] = usage
        return sse(json.dumps(data, ensure_ascii=False, separators=(",", ":")))

    def text(self, index: int, text: str, logprobs: CompletionLogprobs | None = None) -> str:
        wire = logprobs.model_dump() if logprobs is not None else None
        return self._chunk([{"index": index, "text": text, "logprobs": wire, "finish_reason": None}])

    def finish(self, index: int, reason: str) -> str:
        return self._chunk([{"index": index, "text": "", "logprobs": None, "finish_reason": reason}])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        return self._chunk([], usage_of(prompt_tokens, completion_tokens).model_dump())


class _Offsets:
    """Each choice's text offset, for the legacy logprobs' `text_offset` (the echoed prompt counts)."""

    def __init__(self, echoes: Sequence[str]):
        self.at = [len(echo) for echo in echoes]

    def logprobs(self, index: int, entries: Sequence[TokenLogprob]) -> CompletionLogprobs:
        offsets = []
        for entry in entries:
            offsets.append(self.at[index])
            self.at[index] += len(entry.token)
        return legacy_logprobs(entries, offsets)


async def stream_completion(items: AsyncIterator[StreamItem], writer: LegacyChunks, echoes: Sequence[str]
                            ) -> AsyncIterator[str]:  # fmt: skip
    tally = Tally(len(echoes))
    offsets = _Offsets(echoes)
    for index, echo in enumerate(echoes):
        if echo:
            yield writer.text(index, echo)
    async for item in items:
        if isinstance(item, StreamError):
            yield error_event(APIError.from_stream_error(item))
            yield DONE
            return
        if not tally.add(item):
            continue
        if item.text or item.logprobs:
            wire = offsets.logprobs(item.index, item.logprobs) if writer.logprobs else None
            yield writer.text(item.index, item.text, wire)
        if item.finish_reason:
            yield writer.finish(item.index, tally.finish_reason(item.index))
            if tally.finished:
                break
    if not tally.finished:
        yield error_event(APIError(500, "the model stream ended without finishing; try again"))
        yield DONE
        return
    if writer.include_usage:
        usage = tally.usage()
        yield writer.usage(usage.prompt_tokens, usage.completion_tokens)
    yield DONE


async def collect_completion(items: AsyncIterator[StreamItem], ids: ResponseIds, echoes: Sequence[str],
                             logprobs: bool) -> Completion:  # fmt: skip
    tally = Tally(len(echoes))
    async for item in items:
        if isinstance(item, StreamError):
            raise APIError.from_stream_error(item)
        tally.add(item)
        if tally.finished:
            break
    if not tally.finished:
        raise APIError(500, "the model stream ended without finishing; try again")
    offsets = _Offsets(echoes)
    choices = [
        CompletionChoice(
            index=index,
            text=echoes[index] + "".join(state.parts),
            logprobs=offsets.logprobs(index, state.logprobs) if logprobs else None,
            finish_reason=tally.finish_reason(index),
        )
        for index, state in enumerate(tally.choices)
    ]
    return Completion(id=ids.id, created=ids.created, model=ids.model, choices=choices, usage=tally.usage())


def legacy_logprobs(entries: Sequence[TokenLogprob], offsets: Sequence[int]) -> CompletionLogprobs:
    """The legacy shape; each position's top tokens include the chosen one, as vLLM's do."""
    return CompletionLogprobs(
        text_offset=list(offsets),
        token_logprobs=[max(e.logprob, MIN_LOGPROB) for e in entries],
        tokens=[e.token for e in entries],
        top_logprobs=[
            {e.token: max(e.logprob, MIN_LOGPROB)} | {t.token: max(t.logprob, MIN_LOGPROB) for t in e.top_logprobs}
            for e in entries
        ],
    )
