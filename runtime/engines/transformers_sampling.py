"""Per-request sampling inside the Transformers engine's batch: what picks each request's next token.

Transformers' continuous batching samples with one global RNG and knows no seed, min-p, penalties, logit bias,
grammar or logprobs, so the batch decodes greedily from rows that `SamplerLogic` has already decided, request by
request, in the order vLLM applies the same controls:
1. logprobs are read from the model's raw logits (vLLM's default `raw_logprobs`);
2. `logit_bias` is added; presence and frequency penalties are subtracted (counted over the generated tokens);
3. the grammar of a structured output masks every token that cannot continue valid text (xgrammar, the library
   vLLM uses by default, so a schema means the same thing on both engines);
4. Transformers' own processors (repetition penalty, temperature, top-k, top-p, min-p, in `generate`'s order);
5. a draw from the request's own torch.Generator (a seed gives the same text whatever runs alongside), or argmax.

Runs on the batching thread; `RequestSampling.records` is how logprobs reach the event loop (append-only: the
loop reads entries only for tokens the batch has already reported). torch, transformers and xgrammar are imported
inside functions, when the engine first samples or compiles.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from runtime.engines.base import EngineError, GenerationParams, StructuredOutput


@dataclass(frozen=True)
class TokenRecord:
    """The logprobs at one generated position: the chosen token's and the k most likely (ids, most likely first)."""

    token_id: int
    logprob: float
    top: tuple[tuple[int, float], ...]


@dataclass
class RequestSampling:
    """How one request (one choice) picks its next token. Built on the event loop, used on the batching thread."""

    processors: Any  # transformers LogitsProcessorList; empty for plain greedy
    generator: Any  # torch.Generator of this request; None for greedy
    needs_history: bool  # the processors read the prompt and the tokens so far (repetition penalty)
    bias: tuple[Any, Any] | None = None  # (token ids, values) tensors added to the logits
    presence: float = 0.0
    frequency: float = 0.0
    grammar: Any = None  # xgrammar.GrammarMatcher: the output must stay valid under it
    top_logprobs: int | None = None  # None: no logprobs recorded
    records: list[TokenRecord] = field(default_factory=list)

    @property
    def plain_greedy(self) -> bool:
        """The batch's own argmax is already this request's choice."""
        return (
            self.generator is None and not self.processors and self.bias is None and not self.presence
            and not self.frequency and self.grammar is None and self.top_logprobs is None
        )  # fmt: skip


def request_sampling(params: GenerationParams, device: Any, vocab_size: int, seed: int | None,
                     grammar: Any = None) -> RequestSampling:  # fmt: skip
    """GenerationParams -> one choice's sampling, as `generate` would do it with the same values. Unset values are
    the neutral ones, so a model's generation_config defaults (often top_k=50 or a temperature) do not leak into
    what the client asked. `seed`: this choice's seed (vLLM's rule: seed + choice index); `grammar`: a compiled
    grammar (`Grammars.compile`) the output must follow."""
    import torch
    from transformers import (
        LogitsProcessorList,
        MinPLogitsWarper,
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    processors = LogitsProcessorList()
    penalised = params.repetition_penalty not in (None, 0, 1.0)  # 0 or None: unset
    if penalised:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    generator = None
    if params.temperature:  # None (neither request nor spec set one) or 0: greedy, sampling knobs unused
        if params.temperature != 1.0:
            processors.append(TemperatureLogitsWarper(params.temperature))
        if params.top_k and params.top_k > 0:
            processors.append(TopKLogitsWarper(params.top_k))
        if params.top_p is not None and params.top_p < 1.0:
            processors.append(TopPLogitsWarper(params.top_p))
        if params.min_p:
            processors.append(MinPLogitsWarper(params.min_p))
        generator = torch.Generator(device=device)
        if seed is None:
            generator.seed()  # a fresh nondeterministic seed
        else:
            generator.manual_seed(seed % 2**64)  # torch takes unsigned 64-bit seeds; OpenAI's may be negative
    return RequestSampling(
        processors, generator, penalised,
        bias=_bias_tensors(params.logit_bias, device, vocab_size),
        presence=params.presence_penalty or 0.0,
        frequency=params.frequency_penalty or 0.0,
        grammar=grammar() if grammar is not None else None,
        top_logprobs=params.logprobs,
    )  # fmt: skip


def _bias_tensors(bias: Sequence[tuple[int, float]], device: Any, vocab_size: int) -> tuple[Any, Any] | None:
    if not bias:
        return None
    import torch

    outside = [token_id for token_id, _ in bias if token_id >= vocab_size]
    if outside:
        raise EngineError(
            "invalid_request",
            f"logit_bias names token ids outside the model's vocabulary (0..{vocab_size - 1}): {outside[:5]}",
            "logit_bias",
        )
    ids = torch.tensor([token_id for token_id, _ in bias], dtype=torch.long, device=device)
    values = torch.tensor([value for _, value in bias], dtype=torch.float32, device=device)
    return ids, values


class Grammars:
    """Compiles structured outputs for one tokenizer with xgrammar (its compiler caches compiled schemas)."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Sequence[int]):
        self._tokenizer = tokenizer
        self._vocab_size = vocab_size
        self._eos_ids = sorted(eos_ids)
        self._compiler: Any = None
        self._lock = threading.Lock()  # compile() runs in worker threads

    def compile(self, structured: StructuredOutput) -> Any:
        """A factory of matchers for `structured` (one matcher per choice). Slow the first time (builds the
        vocabulary's index, ~0.2 s for a 49k vocabulary): call it off the event loop."""
        import xgrammar

        with self._lock:
            if self._compiler is None:
                info = xgrammar.TokenizerInfo.from_huggingface(
                    self._tokenizer, vocab_size=self._vocab_size, stop_token_ids=self._eos_ids
                )
                self._compiler = xgrammar.GrammarCompiler(info)
        try:
            # No free whitespace between JSON tokens (vLLM's disable_any_whitespace): a small model could otherwise
            # emit blanks until max_tokens and never close the object.
            if structured.json_schema is None:
                compiled = self._compiler.compile_json_schema('{"type": "object"}', any_whitespace=False)
            else:
                compiled = self._compiler.compile_json_schema(structured.json_schema, any_whitespace=False,
                                                              strict_mode=True)  # fmt: skip
        except (RuntimeError, ValueError) as exc:  # xgrammar's words for a schema it cannot turn into a grammar
            raise EngineError(
                "invalid_request", f"the JSON schema cannot be enforced: {exc}", "response_format"
            ) from exc
        return functools.partial(xgrammar.GrammarMatcher, compiled)


class SamplerLogic:
    """Picks the next token of every request in a batch step, each with its own `RequestSampling`.

    Runs on the manager's thread: `prepare_tensor_args` when a step is scheduled (with the requests that get a
    token, in the order of the logits' rows), then `__call__` with those logits. `requests` is filled and emptied by
    the engine on the event loop; a request missing from it (cancelled in the meantime) is treated as greedy.
    """

    supported_kwargs: ClassVar[dict[str, type]] = {}  # takes no add_request keywords: see `requests`
    ignored_kwargs: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.requests: dict[str, RequestSampling] = {}
        self._rows: list[tuple[RequestSampling | None, Any]] = []
        self._bitmask: Any = None

    def fill_defaults(self, int32_tensor: Any) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> Any:
        import torch

        self._rows = [(self.requests.get(r.state.request_id), r.state) for r in requests_with_new_token]
        return torch.zeros(len(self._rows), dtype=torch.int32)

    def __call__(self, scores: Any, tensor_arg: Any) -> Any:
        import torch

        count = len(self._rows)
        chosen = scores[:count].argmax(dim=-1)
        for row, (sampling, state) in enumerate(self._rows):
            if sampling is None or sampling.plain_greedy:
                continue  # the argmax above
            chosen[row] = self._pick(sampling, state, scores[row : row + 1])
        picked = scores.clone()
        picked[:count] = -math.inf
        picked[torch.arange(count, device=scores.device), chosen] = 0.0
        return picked

    def _pick(self, sampling: RequestSampling, state: Any, logits: Any) -> int:
        import torch

        raw = logits.float()
        logits = raw.clone()
        if sampling.bias is not None:
            ids, values = sampling.bias
            logits[0, ids] += values
        if sampling.presence or sampling.frequency:
            generated = torch.tensor(state.generated_tokens, dtype=torch.long, device=logits.device)
            counts = torch.bincount(generated, minlength=logits.shape[-1])[: logits.shape[-1]].to(logits.dtype)
            logits[0] -= sampling.frequency * counts + sampling.presence * (counts > 0).to(logits.dtype)
        if sampling.grammar is not None:
            self._mask(sampling.grammar, logits)
        if sampling.processors:
            ids = state.initial_tokens + state.generated_tokens if sampling.needs_history else []
            history = torch.tensor([ids], dtype=torch.long, device=logits.device)
            logits = sampling.processors(history, logits)
        if sampling.generator is None:
            token = int(logits.argmax())
        else:
            token = int(torch.multinomial(logits.softmax(dim=-1), 1, generator=sampling.generator)[0, 0])
        if sampling.grammar is not None:
            sampling.grammar.accept_token(token)
        if sampling.top_logprobs is not None:
            sampling.records.append(_record(raw, token, sampling.top_logprobs))
        return token

    def _mask(self, matcher: Any, logits: Any) -> None:
        import xgrammar

        vocab = logits.shape[-1]
        if self._bitmask is None or self._bitmask.shape[-1] != (vocab + 31) // 32:
            self._bitmask = xgrammar.allocate_token_bitmask(1, vocab)
        matcher.fill_next_token_bitmask(self._bitmask)
        xgrammar.apply_token_bitmask_inplace(logits, self._bitmask.to(logits.device), vocab_size=vocab)


def _record(raw: Any, token: int, top: int) -> TokenRecord:
    logprobs = raw[0].log_softmax(dim=-1)
    best: tuple[tuple[int, float], ...] = ()
    if top:
        values, ids = logprobs.topk(top)
        best = tuple(zip(ids.tolist(), values.tolist(), strict=True))
    return TokenRecord(token, float(logprobs[token]), best)


@functools.cache
def sampler_class() -> type:
    """`SamplerLogic` as a subclass of Transformers' batching processor base, built on first use so that importing
    this module does not import transformers."""
    from transformers.generation.continuous_batching.cb_logits_processors import ContinuousBatchingLogitsProcessor

    class Sampler(SamplerLogic, ContinuousBatchingLogitsProcessor):
        pass

    return Sampler
