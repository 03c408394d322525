"""POST /v1/embeddings: inputs in, one vector per input out, as floats or base64 (little-endian float32, which is
what the official SDK asks for by default and decodes with numpy).

The model's replica makes the vectors (`runtime.engines.base.EmbeddingResult`, float32 bytes); this module only
checks the request, admits it through the model's gate under its deadline, and writes the list. Pure: no FastAPI,
no Ray.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from array import array
from collections.abc import Awaitable, Callable

from runtime.engines.base import EmbeddingRequest, StreamError
from runtime.openai.errors import APIError
from runtime.openai.metering import model_label
from runtime.openai.protocol import Embedding, EmbeddingList, EmbeddingsRequest, EmbeddingUsage
from runtime.openai.service import ChatCompletions, Exchange, Reply, parse_body


class Embeddings:
    def __init__(self, chat: ChatCompletions):
        self.chat = chat  # the models, their cards and admission gates

    async def create(self, read_body: Callable[[], Awaitable[bytes]], exchange: Exchange) -> Reply:
        body = parse_body(await read_body(), EmbeddingsRequest, "an embeddings request")
        meter = exchange.meter
        meter.model = model_label(body.model)
        meter.choices = 1  # done when the vectors are (see below)
        card = self.chat.card(body.model, "embed", exchange.caller)
        request_id = f"embd-{uuid.uuid4().hex}"
        meter.request_id = request_id
        inputs = _inputs(body.input)
        await self.chat.charge(card, exchange, sum(len(i) if isinstance(i, tuple) else len(i) // 4 + 1 for i in inputs))
        self.chat.enter_gate(card, exchange)
        request = EmbeddingRequest(request_id=request_id, inputs=inputs, dimensions=body.dimensions)
        try:
            result = await asyncio.wait_for(self.chat.models[card.id].embed(request), card.limits.timeout_s)
        except asyncio.TimeoutError:
            raise APIError(504, f"the request to {card.id} took longer than its {card.limits.timeout_s:g} s limit; "
                           "send fewer inputs or raise request_timeout_s", code="timeout") from None  # fmt: skip
        if isinstance(result, StreamError):
            meter.error = result
            raise APIError.from_stream_error(result)
        meter.prompt_tokens = result.prompt_tokens
        meter.finish_reasons[0] = "stop"  # completed: the vectors are made
        encode = _base64 if body.encoding_format == "base64" else _floats
        data = [Embedding(embedding=encode(vector), index=i) for i, vector in enumerate(result.vectors)]
        usage = EmbeddingUsage(prompt_tokens=result.prompt_tokens, total_tokens=result.prompt_tokens)
        return Reply(request_id, completion=EmbeddingList(data=data, model=card.id, usage=usage))


def _inputs(value: str | list) -> tuple[str | tuple[int, ...], ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value[0], int):
        return (tuple(value),)
    return tuple(v if isinstance(v, str) else tuple(v) for v in value)


def _floats(vector: bytes) -> list[float]:
    floats = array("f")
    floats.frombytes(vector)
    return floats.tolist()


def _base64(vector: bytes) -> str:
    return base64.b64encode(vector).decode("ascii")
