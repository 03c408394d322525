"""One request of the Transformers engine, from the batching thread's token ids to the caller's deltas.

Owns the incremental detokenisation (a character split over tokens is never streamed in halves), stop strings
(through `StopMatcher`), usage counts and finish reasons. The batching thread reports each request's growing list of
generated token ids (Transformers' `GenerationOutput`); `RequestStream` keeps only the newest report, so a caller
that fell behind reads everything that piled up at once instead of one item per token.

Pure Python (asyncio and the engine contract): the engine module owns everything that touches torch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Collection, Sequence
from typing import Any

from runtime.engines.base import Delta, FinishReason
from runtime.engines.stops import StopMatcher

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


class RequestStream:
    """The bridge for one request: `put` runs on the event loop (called by the batching thread through
    call_soon_threadsafe) with the request's latest output; `deltas` turns outputs into the engine's deltas."""

    def __init__(self, tracker: TextTracker, prompt_tokens: int, max_new: int, eos_ids: Collection[int]):
        self.tracker = tracker
        self.prompt_tokens = prompt_tokens
        self.max_new = max_new
        self.eos_ids = eos_ids  # empty when the request ignores end-of-sequence
        self.started = False  # the batch has produced this request's first token
        self.finished = False  # the batching thread is done with this request (finished or failed)
        self._latest: Any = None
        self._arrived = asyncio.Event()

    def put(self, output: Any) -> None:
        self.started = True
        self.finished = output.is_finished()
        self._latest = output
        self._arrived.set()

    async def deltas(self) -> AsyncIterator[Delta]:
        tracker, taken = self.tracker, 0
        while True:
            await self._arrived.wait()
            self._arrived.clear()
            output = self._latest
            if output.error is not None:
                raise GenerationFailed(output.error)
            ids = output.generated_tokens  # every token generated so far, not just the new ones
            text = tracker.feed(ids[taken:])
            taken = len(ids)
            if tracker.stopped or output.is_finished():
                break
            if text:
                yield Delta(text, self.prompt_tokens, len(tracker.token_ids))
        text += tracker.flush()
        yield Delta(text, self.prompt_tokens, len(tracker.token_ids), self._finish_reason())

    def _finish_reason(self) -> FinishReason:
        ids = self.tracker.token_ids
        if self.tracker.stopped or (ids and ids[-1] in self.eos_ids):
            return "stop"
        return "length" if len(ids) >= self.max_new else "stop"
