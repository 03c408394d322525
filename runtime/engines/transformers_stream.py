"""One request of the Transformers engine, from the batching thread's token ids to the caller's deltas.

Owns the incremental detokenisation (a character split over tokens is never streamed in halves), stop strings
(through `StopMatcher`), usage counts and finish reasons. The batching thread reports each request's growing list of
generated token ids (Transformers' `GenerationOutput`); `RequestStream` keeps only the newest report, so a caller
that fell behind reads everything that piled up at once instead of one item per token. `ChoiceGroup` reads the
choices of one request (n > 1) together, and logprobs come from the sampler's records.

Pure Python (asyncio and the engine contract): the engine module owns everything that touches torch.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Collection, Sequence
from typing import TYPE_CHECKING, Any

from runtime.engines.base import Delta, FinishReason, TokenLogprob, TopLogprob
from runtime.engines.stops import StopMatcher

if TYPE_CHECKING:
    from runtime.engines.transformers_sampling import TokenRecord

_REPLACEMENT = "\ufffd"  # what a decoder shows for an incomplete UTF-8 sequence


class GenerationFailed(Exception):
    """The batching thread failed this request (its message says why); the engine decides what the caller sees."""


class TextTracker:
    """Token ids of one completion -> the text that is safe to stream: whole characters, nothing of a stop string.

    Decodes a short window (the tokens since the last text plus the few before them, as TGI and vLLM do) rather
    than the whole completion at every token: the cost stays flat as the text grows, and the context token keeps
    the spacing that depends on its predecessor.
    """

    def __init__(self, tokenizer: Any, stops: Sequence[str]):
        self._tokenizer = tokenizer
        self._matcher = StopMatcher(stops)
        self.token_ids: list[int] = []  # every token taken, up to the one that completed a stop string
        self._prefix = 0  # the window starts here: tokens already turned into text, kept as context
        self._read = 0  # tokens before this one have been turned into text

    @property
    def stopped(self) -> bool:
        return self._matcher.stopped

    def feed(self, token_ids: Sequence[int]) -> str:
        """Take new token ids one by one, until a stop string ends the text; return the text safe to emit now."""
        out = []
        for token_id in token_ids:
            if self.stopped:
                break
            self.token_ids.append(token_id)
            prefix, text = self._window()
            if len(text) <= len(prefix) or text.endswith(_REPLACEMENT):
                continue  # no text yet, or the middle of a multi-byte character that the next token completes
            self._prefix, self._read = self._read, len(self.token_ids)
            out.append(self._matcher.feed(text[len(prefix) :]))
        return "".join(out)

    def flush(self) -> str:
        """The end of generation: text still held, a dangling partial character (shown as U+FFFD, as vLLM does) or
        a partial stop match that never completed."""
        if self.stopped:
            return ""
        prefix, text = self._window()
        return self._matcher.feed(text[len(prefix) :]) + self._matcher.flush()

    def _window(self) -> tuple[str, str]:
        """The window's text without and with the tokens not yet turned into text."""
        ids = self.token_ids
        return self._decode(ids[self._prefix : self._read]), self._decode(ids[self._prefix :])

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def token_text(self, token_id: int) -> str:
        """One token on its own, as logprobs name it (special tokens included, as vLLM's)."""
        return self._tokenizer.decode([token_id], clean_up_tokenization_spaces=False)


class RequestStream:
    """One choice of one request: `put` runs on the event loop (called by the batching thread through
    call_soon_threadsafe) with the choice's latest output; `take` turns what arrived since into deltas.

    `records`: the choice's logprobs, one per generated token, appended by the sampler (None: not asked for).
    """

    def __init__(self, tracker: TextTracker, prompt_tokens: int, max_new: int, eos_ids: Collection[int],
                 index: int = 0, records: Sequence[TokenRecord] | None = None) -> None:  # fmt: skip
        self.tracker = tracker
        self.prompt_tokens = prompt_tokens
        self.max_new = max_new
        self.eos_ids = eos_ids  # empty when the request ignores end-of-sequence
        self.index = index
        self.records = records
        self.started = False  # the batch has produced this choice's first token
        self.finished = False  # the batching thread is done with this choice (finished or failed)
        self.done = False  # its last delta has been taken
        self.arrived = asyncio.Event()  # set by put(); a ChoiceGroup shares one among its choices
        self._latest: Any = None
        self._fresh = False
        self._taken = 0  # generated tokens already fed to the tracker
        self._reported = 0  # tokens whose logprobs have gone out

    def put(self, output: Any) -> None:
        self.started = True
        self.finished = output.is_finished()
        self._latest, self._fresh = output, True
        self.arrived.set()

    def take(self) -> list[Delta]:
        """The delta for what arrived since the last call: none, or one (the last one has the finish reason)."""
        if not self._fresh or self.done:
            return []
        self._fresh = False
        output = self._latest
        if output.error is not None:
            raise GenerationFailed(output.error)
        ids = output.generated_tokens  # every token generated so far, not just the new ones
        text = self.tracker.feed(ids[self._taken :])
        self._taken = len(ids)
        if self.tracker.stopped or output.is_finished():
            self.done = True
            text += self.tracker.flush()
            return [self._delta(text, self._finish_reason())]
        return [self._delta(text)] if text or self._unreported() else []

    def _delta(self, text: str, finish_reason: FinishReason | None = None) -> Delta:
        count = len(self.tracker.token_ids)
        return Delta(text, self.prompt_tokens, count, finish_reason, self.index, self._logprobs(count))

    def _unreported(self) -> bool:
        return self.records is not None and len(self.tracker.token_ids) > self._reported

    def _logprobs(self, count: int) -> tuple[TokenLogprob, ...]:
        if self.records is None:
            return ()
        records, self._reported = self.records[self._reported : count], count
        return tuple(self._token_logprob(record) for record in records)

    def _token_logprob(self, record: TokenRecord) -> TokenLogprob:
        decode = self.tracker.token_text
        token = decode(record.token_id)
        top = tuple(TopLogprob(decode(i), logprob, _utf8(decode(i))) for i, logprob in record.top)
        return TokenLogprob(token, record.logprob, _utf8(token), top)

    def _finish_reason(self) -> FinishReason:
        ids = self.tracker.token_ids
        if self.tracker.stopped or (ids and ids[-1] in self.eos_ids):
            return "stop"
        return "length" if len(ids) >= self.max_new else "stop"


class ChoiceGroup:
    """The choices of one request, read together: deltas of each as its outputs arrive, interleaved, until every
    choice has finished. `copies` > 1: one greedy choice stands for that many identical ones."""

    def __init__(self, streams: Sequence[RequestStream], copies: int = 1):
        self.streams = list(streams)
        self.copies = copies
        self._arrived = asyncio.Event()
        for stream in self.streams:
            if stream.arrived.is_set():  # an output came before the group was made
                self._arrived.set()
            stream.arrived = self._arrived

    async def deltas(self) -> AsyncIterator[Delta]:
        while not all(stream.done for stream in self.streams):
            await self._arrived.wait()
            self._arrived.clear()
            for stream in self.streams:
                for delta in stream.take():
                    for index in range(self.copies) if self.copies > 1 else (delta.index,):
                        yield dataclasses.replace(delta, index=index) if index != delta.index else delta


def _utf8(token: str) -> list[int]:
    return list(token.encode("utf-8", errors="replace"))
