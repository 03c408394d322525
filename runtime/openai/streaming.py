"""Engine deltas -> OpenAI chat responses: the Server-Sent Events sequence and the non-streaming aggregate.

The stream follows vLLM's order: one id and `created` for the whole stream; a first chunk with the assistant role;
content chunks; a chunk with `finish_reason`; with `include_usage` a last chunk with `choices: []` and the usage (and
`usage: null` on every other chunk, as OpenAI sends); on a failure an error event; always `data: [DONE]`.
Pure: no FastAPI, no Ray.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

from runtime.engines.base import Delta, StreamError
from runtime.openai.errors import APIError
from runtime.openai.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChunkChoice,
    DeltaMessage,
    ResponseMessage,
    Usage,
)

DONE = "data: [DONE]\n\n"
StreamItem = Delta | StreamError


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


@dataclass(frozen=True)
class ResponseIds:
    """What every chunk of one response shares."""

    id: str
    created: int
    model: str


class ChunkWriter:
    def __init__(self, ids: ResponseIds, include_usage: bool):
        self.ids = ids
        self.include_usage = include_usage

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(
            id=self.ids.id, created=self.ids.created, model=self.ids.model, choices=choices, usage=usage
        )
        data = chunk.model_dump(exclude={"usage"} if not self.include_usage else set())
        for choice in data["choices"]:
            choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
        return sse(json.dumps(data, ensure_ascii=False, separators=(",", ":")))

    def role(self) -> str:
        return self._chunk([ChunkChoice(index=0, delta=DeltaMessage(role="assistant", content=""))])

    def content(self, text: str) -> str:
        return self._chunk([ChunkChoice(index=0, delta=DeltaMessage(content=text))])

    def finish(self, reason: str) -> str:
        return self._chunk([ChunkChoice(index=0, delta=DeltaMessage(), finish_reason=reason)])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        return self._chunk([], _usage(prompt_tokens, completion_tokens))


def error_event(error: APIError) -> str:
    return sse(json.dumps(error.body(), ensure_ascii=False, separators=(",", ":")))


async def stream_events(items: AsyncIterator[StreamItem], writer: ChunkWriter) -> AsyncIterator[str]:
    """The SSE text of one response. `items` may start with an item the caller already read."""
    yield writer.role()
    last: Delta | None = None
    async for item in items:
        if isinstance(item, StreamError):
            yield error_event(APIError.from_stream_error(item))
            yield DONE
            return
        last = item
        if item.text:
            yield writer.content(item.text)
        if item.finish_reason:
            yield writer.finish(item.finish_reason)
            break
    if last is None or last.finish_reason is None:
        yield error_event(APIError(500, "the model stream ended without finishing; try again"))
        yield DONE
        return
    if writer.include_usage:
        yield writer.usage(last.prompt_tokens, last.completion_tokens)
    yield DONE


async def collect(items: AsyncIterator[StreamItem], ids: ResponseIds) -> ChatCompletion:
    """The non-streaming response; a StreamError anywhere becomes an APIError (nothing was sent yet)."""
    parts: list[str] = []
    last: Delta | None = None
    async for item in items:
        if isinstance(item, StreamError):
            raise APIError.from_stream_error(item)
        parts.append(item.text)
        last = item
        if item.finish_reason:
            break
    if last is None or last.finish_reason is None:
        raise APIError(500, "the model stream ended without finishing; try again")
    return ChatCompletion(
        id=ids.id,
        created=ids.created,
        model=ids.model,
        choices=[
            Choice(index=0, message=ResponseMessage(content="".join(parts)), finish_reason=last.finish_reason)
        ],
        usage=_usage(last.prompt_tokens, last.completion_tokens),
    )


def _usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
