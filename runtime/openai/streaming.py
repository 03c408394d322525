"""Engine deltas -> OpenAI chat responses: the Server-Sent Events sequence and the non-streaming aggregate.

The stream follows vLLM's order: one id and `created` for the whole stream; first a chunk with the assistant role
for each choice; content chunks, each naming its choice `index` (choices interleave as the engine produces them);
for each choice a chunk with its `finish_reason`; with `include_usage` a last chunk with `choices: []` and the usage
summed over the choices (and `usage: null` on every other chunk, as OpenAI sends); on a failure, or a stream that
ends before every choice finished, an error event; always one `data: [DONE]`. Pure: no FastAPI, no Ray.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from runtime.engines.base import Delta, StreamError, TokenLogprob
from runtime.model_api import StreamItem
from runtime.openai.errors import APIError
from runtime.openai.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionTokenLogprob,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    FunctionCall,
    ResponseMessage,
    ToolCall,
    TopLogprob,
    Usage,
)
from runtime.openai.tools import CallArguments, CallStart, Content, ToolEvent, ToolUse

DONE = "data: [DONE]\n\n"
_SLOT = "\u0000slot\u0000"  # stands for the text while a chunk's fixed text is built; no JSON string encodes to it
# JSON has no -inf: vLLM's server (and OpenAI) send this for a token the model considers impossible.
MIN_LOGPROB = -9999.0


def sse(payload: str) -> str:
    return f"data: {payload}\n\n"


@dataclass(frozen=True)
class ResponseIds:
    """What every chunk of one response shares."""

    id: str
    created: int
    model: str


class ChunkWriter:
    """Chunk text for one response. `logprobs`: whether the client asked for them (then content chunks carry a
    logprobs object, else null)."""

    def __init__(self, ids: ResponseIds, include_usage: bool, logprobs: bool = False):
        self.ids = ids
        self.include_usage = include_usage
        self.logprobs = logprobs
        # A content chunk without logprobs is the hot path (one per token or so): its text around the delta is the
        # same for the whole response, so it is built once from the wire model and only the text is encoded per
        # chunk (a test checks both paths agree).
        # rpartition: the content comes after the id and the model name, whatever they hold
        head, _, tail = self._chunk([ChunkChoice(index=0, delta=DeltaMessage(content=_SLOT))]).rpartition(
            json.dumps(_SLOT)
        )
        before_index, _, after_index = head.rpartition('"index":0')  # the last one: the choice's, not in a name
        self._content_parts = (before_index + '"index":', after_index, tail)

    def _chunk(self, choices: list[ChunkChoice], usage: Usage | None = None) -> str:
        chunk = ChatCompletionChunk(
            id=self.ids.id, created=self.ids.created, model=self.ids.model, choices=choices, usage=usage
        )
        data = chunk.model_dump(exclude={"usage"} if not self.include_usage else set())
        for choice, model in zip(data["choices"], choices, strict=True):
            choice["delta"] = model.delta.model_dump(exclude_none=True)
        return sse(json.dumps(data, ensure_ascii=False, separators=(",", ":")))

    def role(self, index: int = 0) -> str:
        return self._chunk([ChunkChoice(index=index, delta=DeltaMessage(role="assistant", content=""))])

    def content(self, text: str, index: int = 0, logprobs: Sequence[TokenLogprob] = ()) -> str:
        if not self.logprobs:
            before_index, after_index, tail = self._content_parts
            return f"{before_index}{index}{after_index}{json.dumps(text, ensure_ascii=False)}{tail}"
        wire = choice_logprobs(logprobs)
        return self._chunk([ChunkChoice(index=index, delta=DeltaMessage(content=text), logprobs=wire)])

    def tool_event(self, event: CallStart | CallArguments, index: int = 0) -> str:
        """A tool call's first chunk (its index, id, type and name, empty arguments) or its next arguments."""
        if isinstance(event, CallStart):
            call = DeltaToolCall(index=event.index, id=event.id, type="function",
                                 function=DeltaFunctionCall(name=event.name, arguments=""))  # fmt: skip
        else:
            call = DeltaToolCall(index=event.index, function=DeltaFunctionCall(arguments=event.text))
        return self._chunk([ChunkChoice(index=index, delta=DeltaMessage(tool_calls=[call]))])

    def finish(self, reason: str, index: int = 0) -> str:
        return self._chunk([ChunkChoice(index=index, delta=DeltaMessage(), finish_reason=reason)])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        return self._chunk([], usage_of(prompt_tokens, completion_tokens))


def error_event(error: APIError) -> str:
    return sse(json.dumps(error.body(), ensure_ascii=False, separators=(",", ":")))


@dataclass
class _ChoiceState:
    """What one choice has produced so far."""

    parts: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    completion_tokens: int = 0
    finish_reason: str | None = None


class Tally:
    """Per-choice progress of one response; deltas of a choice that already finished are ignored."""

    def __init__(self, n: int, tools: ToolUse | None = None):
        self.choices = [_ChoiceState() for _ in range(n)]
        self.readers = [tools.reader() if tools else None for _ in range(n)]
        self.prompt_tokens = 0

    def add(self, delta: Delta) -> bool:
        """Record a delta; False when its choice had already finished (nothing of it may be sent)."""
        state = self.choices[delta.index]
        if state.finish_reason is not None:
            return False
        state.parts.append(delta.text)
        state.logprobs.extend(delta.logprobs)
        state.completion_tokens = delta.completion_tokens
        state.finish_reason = delta.finish_reason
        self.prompt_tokens = delta.prompt_tokens
        return True

    @property
    def finished(self) -> bool:
        return all(state.finish_reason is not None for state in self.choices)

    def usage(self) -> Usage:
        return usage_of(self.prompt_tokens, sum(state.completion_tokens for state in self.choices))

    def events(self, delta: Delta) -> list[ToolEvent]:
        """What a delta's text says: itself as content, or, with tools, content and tool calls so far."""
        reader = self.readers[delta.index]
        if reader is None:
            return [Content(delta.text)] if delta.text else []
        events = reader.feed(delta.text)
        return events + reader.finish() if delta.finish_reason else events

    def finish_reason(self, index: int) -> str:
        """A choice that ended by itself after calling tools ends with "tool_calls", as OpenAI's do."""
        reason, reader = self.choices[index].finish_reason, self.readers[index]
        return "tool_calls" if reason == "stop" and reader is not None and reader.calls else reason or "stop"

    def message(self, index: int) -> ResponseMessage:
        reader = self.readers[index]
        if reader is None:
            return ResponseMessage(content="".join(self.choices[index].parts))
        calls = [ToolCall(id=c.id, function=FunctionCall(name=c.name, arguments=c.arguments)) for c in reader.calls]
        return ResponseMessage(content=reader.content or (None if calls else ""), tool_calls=calls or None)


async def stream_events(
    items: AsyncIterator[StreamItem], writer: ChunkWriter, n: int = 1, tools: ToolUse | None = None,
    on_complete: Callable[[ChatCompletion], Awaitable[None]] | None = None,
) -> AsyncIterator[str]:  # fmt: skip
    """The SSE text of one response with `n` choices. `items` may start with an item the caller already read.
    `tools`: the request's tool use, whose reader turns each choice's text into content and tool-call chunks.
    `on_complete`: given the whole completion, as a non-streamed answer would have been, once every choice finished."""
    for index in range(n):
        yield writer.role(index)
    tally = Tally(n, tools)
    async for item in items:
        if isinstance(item, StreamError):
            yield error_event(APIError.from_stream_error(item))
            yield DONE
            return
        if not tally.add(item):
            continue
        logprobs = item.logprobs  # sent with the delta's first content chunk, or alone
        for event in tally.events(item):
            if isinstance(event, Content):
                yield writer.content(event.text, item.index, logprobs)
                logprobs = ()
            else:
                yield writer.tool_event(event, item.index)
        if logprobs:
            yield writer.content("", item.index, logprobs)
        if item.finish_reason:
            yield writer.finish(tally.finish_reason(item.index), item.index)
            if tally.finished:
                break
    if not tally.finished:
        yield error_event(_unfinished())
        yield DONE
        return
    if on_complete is not None:
        await on_complete(completion_of(tally, writer.ids, writer.logprobs))
    if writer.include_usage:
        usage = tally.usage()
        yield writer.usage(usage.prompt_tokens, usage.completion_tokens)
    yield DONE


async def collect(
    items: AsyncIterator[StreamItem], ids: ResponseIds, n: int = 1, logprobs: bool = False,
    tools: ToolUse | None = None,
) -> ChatCompletion:  # fmt: skip
    """The non-streaming response; a StreamError anywhere becomes an APIError (nothing was sent yet)."""
    tally = Tally(n, tools)
    async for item in items:
        if isinstance(item, StreamError):
            raise APIError.from_stream_error(item)
        if tally.add(item):
            tally.events(item)  # with tools, the reader reads the text as it comes
        if tally.finished:
            break
    if not tally.finished:
        raise _unfinished()
    return completion_of(tally, ids, logprobs)


def completion_of(tally: Tally, ids: ResponseIds, logprobs: bool) -> ChatCompletion:
    """The whole completion of a finished tally."""
    choices = [
        Choice(
            index=index,
            message=tally.message(index),
            logprobs=choice_logprobs(state.logprobs) if logprobs else None,
            finish_reason=tally.finish_reason(index),
        )
        for index, state in enumerate(tally.choices)
    ]
    return ChatCompletion(id=ids.id, created=ids.created, model=ids.model, choices=choices, usage=tally.usage())


def choice_logprobs(logprobs: Sequence[TokenLogprob]) -> ChoiceLogprobs:
    return ChoiceLogprobs(
        content=[
            ChatCompletionTokenLogprob(
                token=entry.token,
                logprob=max(entry.logprob, MIN_LOGPROB),
                bytes=entry.bytes,
                top_logprobs=[
                    TopLogprob(token=top.token, logprob=max(top.logprob, MIN_LOGPROB), bytes=top.bytes)
                    for top in entry.top_logprobs
                ],
            )
            for entry in logprobs
        ]
    )


def _unfinished() -> APIError:
    return APIError(500, "the model stream ended without finishing; try again")


def usage_of(prompt_tokens: int, completion_tokens: int) -> Usage:
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
    )
