"""vLLM's delta outputs -> the engine contract's Deltas: per-choice token counts, finish reasons and logprobs.

Works on the attributes of vLLM's CompletionOutput and Logprob objects without importing vllm, so it stays cheap
to import and test; runtime.engines.vllm is the module that talks to vLLM itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from runtime.engines.base import Delta, TokenLogprob, TopLogprob


class Choices:
    """Per-choice bookkeeping of one request: vLLM's delta outputs (`CompletionOutput`s) -> `Delta`s."""

    def __init__(self, prompt_tokens: int, top_logprobs: int, copies: int, tokenizer: Any):
        self.prompt_tokens = prompt_tokens
        self.top_logprobs = top_logprobs
        self.copies = copies  # > 1: vLLM generates one choice that stands for `copies` identical ones
        self.tokenizer = tokenizer
        self.completion_tokens: dict[int, int] = {}

    def deltas(self, completion: Any) -> list[Delta]:
        """The Deltas for one choice's update: none when it carries nothing to send (no text, no logprobs, and the
        choice goes on), one per copy otherwise."""
        index = completion.index
        self.completion_tokens[index] = self.completion_tokens.get(index, 0) + len(completion.token_ids)
        logprobs = self._logprobs(completion.token_ids, completion.logprobs)
        finish = _finish(completion) if completion.finished() else None
        if finish is None and not completion.text and not logprobs:
            return []
        delta = Delta(completion.text, self.prompt_tokens, self.completion_tokens[index], finish, index, logprobs)
        if self.copies == 1:
            return [delta]
        return [dataclasses.replace(delta, index=i) for i in range(self.copies)]

    def _logprobs(self, token_ids: Sequence[int], positions: Any) -> tuple[TokenLogprob, ...]:
        if positions is None:  # logprobs were not asked for
            return ()
        return tuple(
            self._token_logprob(token_id, position) for token_id, position in zip(token_ids, positions, strict=False)
        )

    def _token_logprob(self, token_id: int, position: Any) -> TokenLogprob:
        """vLLM's logprobs at one position (a dict token id -> Logprob: the chosen token first, then the top k by
        rank, the chosen one only once) -> a TokenLogprob. The alternatives are the k best by rank, which is what
        OpenAI means by top_logprobs; vLLM's own server lists the chosen token first even when it is not among them.
        """
        chosen = position.get(token_id) if position else None
        token = _decoded(self.tokenizer, token_id, chosen.decoded_token if chosen else None)
        if chosen is None:  # as vLLM's server answers: the token, with no logprob known
            return TokenLogprob(token, float("-inf"), _utf8(token))
        ranked = sorted(position.items(), key=_rank)[: self.top_logprobs]
        top = []
        for top_id, top_logprob in ranked:
            top_token = _decoded(self.tokenizer, top_id, top_logprob.decoded_token)
            top.append(TopLogprob(top_token, top_logprob.logprob, _utf8(top_token)))
        return TokenLogprob(token, chosen.logprob, _utf8(token), tuple(top))


def _rank(item: tuple[int, Any]) -> float:
    rank = item[1].rank
    return math.inf if rank is None else rank


def _decoded(tokenizer: Any, token_id: int, decoded: str | None) -> str:
    # vLLM detokenizes logprob tokens itself; decode here only when it did not (as its server does).
    return decoded if decoded is not None else tokenizer.decode([token_id])


def _utf8(token: str) -> list[int]:
    # errors="replace", as vLLM: a token that is part of a multi-byte character decodes to U+FFFD.
    return list(token.encode("utf-8", errors="replace"))


def _finish(completion: Any) -> str:
    # vLLM: "stop" (EOS or a stop string), "length" (max_tokens), "abort"; the contract uses the same names.
    return completion.finish_reason if completion.finish_reason in ("stop", "length", "abort") else "stop"
