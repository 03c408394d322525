"""The engine contract: what every engine takes (a chat and generation parameters) and yields (typed deltas).

Engines know nothing of HTTP, SSE or OpenAI field names. They raise `EngineError` for anything a client caused
(a prompt too long for the context, a parameter the engine cannot honour) and let bugs propagate.
Imports only the standard library, so the ingress and the unit tests can use these types without torch or vLLM.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length", "abort"]
# timeout: the request ran past its deadline (the serving layer cut it; engines never raise it).
ErrorKind = Literal["invalid_request", "context_length", "unavailable", "timeout", "internal"]


@dataclass(frozen=True)
class GenerationParams:
    """Sampling for one request, already merged with the deployment's defaults. None means the engine's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None
    ignore_eos: bool = False  # generate max_tokens even past end-of-sequence (benchmarks)
    n: int = 1  # choices to generate for the one prompt
    # None: no logprobs; 0: the chosen token's logprob only; k: also the k most likely tokens at each position.
    logprobs: int | None = None
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit) pairs
    structured: StructuredOutput | None = None  # constrained decoding: the text must match this


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on the generated text, enforced token by token (constrained decoding).

    `json_schema` is a JSON Schema as JSON text (already checked by the serving layer); None means any JSON object.
    """

    json_schema: str | None = None


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    # {"role": ..., "content": ...}, content flattened to text; assistant messages may carry "tool_calls" and tool
    # messages "tool_call_id", in the shape Hugging Face chat templates read.
    messages: tuple[dict[str, Any], ...]
    params: GenerationParams = field(default_factory=GenerationParams)
    # True when the client asked for max_tokens itself: then a prompt that leaves less room is an error, as in vLLM;
    # a default max_tokens is clipped to the room left instead.
    max_tokens_requested: bool = False
    # Function definitions ({"type": "function", "function": {...}}) for the chat template to show the model.
    tools: tuple[dict[str, Any], ...] = ()
    # A raw prompt (/v1/completions): text, tokenized as is, or token ids. When set, `messages` is empty and no chat
    # template is applied.
    prompt: str | tuple[int, ...] | None = None


@dataclass(frozen=True)
class EmbeddingRequest:
    """Inputs to embed in one request: each a text or a list of token ids (the model's own vocabulary)."""

    request_id: str
    inputs: tuple[str | tuple[int, ...], ...]
    dimensions: int | None = None  # truncate each vector to this size (Matryoshka models); None: the model's own


@dataclass(frozen=True)
class EmbeddingResult:
    """One vector per input, in input order, each as little-endian float32 bytes (compact across Ray; the wire
    writes floats or base64 from them without a copy through Python floats), and the tokens the inputs took."""

    vectors: tuple[bytes, ...]
    prompt_tokens: int


@dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a position. `bytes` is the token's UTF-8 encoding (None when unknown)."""

    token: str
    logprob: float
    bytes: list[int] | None


@dataclass(frozen=True)
class TokenLogprob:
    """The chosen token at one position, and the most likely tokens there (most likely first)."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class Delta:
    """New text of one choice since that choice's previous delta.

    `prompt_tokens` is the prompt's length (shared by every choice, counted once); `completion_tokens` is the running
    total of choice `index`. Every choice's last delta has a finish_reason. `logprobs` has one entry per token
    generated since the previous delta, when logprobs were asked for (a delta may carry them and no text, when the
    text of those tokens is still held back).
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason | None = None
    index: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()
    # Seconds the request waited in the model replica before its engine took it: on the replica's first delta only
    # (a measurement, not content: deltas compare equal without it).
    queued_s: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class StreamError:
    """A failure, sent in-band so it crosses process boundaries as data, not as a pickled exception."""

    kind: ErrorKind
    message: str
    param: str | None = None


class EngineError(Exception):
    """A request this engine cannot serve as asked. The message says what is wrong and how to fix it."""

    def __init__(self, kind: ErrorKind, message: str, param: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param

    def as_stream_error(self) -> StreamError:
        return StreamError(self.kind, self.message, self.param)


def context_length_error(prompt_tokens: int, max_tokens: int | None, max_model_len: int) -> EngineError:
    """The one wording for 'does not fit', shared by every engine (numbers included, as vLLM and OpenAI do)."""
    if max_tokens is None or prompt_tokens >= max_model_len:
        detail = f"your messages resulted in {prompt_tokens} tokens"
    else:
        detail = (
            f"you requested {prompt_tokens + max_tokens} tokens ({prompt_tokens} in the messages, "
            f"{max_tokens} in the completion)"
        )
    return EngineError(
        "context_length",
        f"This model's maximum context length is {max_model_len} tokens. However, {detail}. "
        "Please reduce the length of the messages or the completion.",
        param="messages",
    )


def completion_budget(prompt_tokens: int, max_tokens: int | None, requested: bool, max_model_len: int) -> int:
    """How many tokens to generate, the one rule for every engine (as vLLM's OpenAI server does it): a default
    max_tokens is clipped to the room left; a requested one that does not fit, or a prompt that fills the context,
    is the client's error."""
    room = max_model_len - prompt_tokens
    if room <= 0:
        raise context_length_error(prompt_tokens, max_tokens if requested else None, max_model_len)
    if max_tokens is None:
        return room
    if requested and max_tokens > room:
        raise context_length_error(prompt_tokens, max_tokens, max_model_len)
    return min(max_tokens, room)


def no_chat_template_error(config: Any) -> RuntimeError:
    """The one wording for a model without a chat template and a spec that names none (a start-up failure)."""
    return RuntimeError(
        f"the tokenizer of {config.source.describe()} has no chat template; set `chat_template` in the spec for "
        f'deployment {config.model_id!r} (a bundled name such as "chatml", a file, or Jinja text)'
    )


def request_prompt_ids(
    tokenizer: Any, request: GenerationRequest, chat_template: str | None = None, vocab_size: int | None = None
) -> list[int]:
    """The prompt's token ids: a raw prompt's (text tokenized as is, or ids checked against `vocab_size`), else the
    chat template (the tokenizer's own or `chat_template`) applied to the messages and tools."""
    if request.prompt is None:
        return chat_prompt_ids(tokenizer, request, chat_template)
    if isinstance(request.prompt, str):
        ids = list(tokenizer(request.prompt, add_special_tokens=True)["input_ids"])
        if not ids:  # an empty prompt, for a tokenizer that adds no BOS: nothing to continue from
            raise EngineError("invalid_request", "prompt is empty; send at least one token", "prompt")
        return ids
    ids = list(request.prompt)
    check_token_ids(ids, vocab_size or len(tokenizer), "prompt")
    return ids


def check_token_ids(ids: Any, vocab_size: int, param: str) -> None:
    """Token ids sent by a client must be in the model's vocabulary (an id past it would index out of bounds)."""
    outside = [i for i in ids if not 0 <= i < vocab_size]
    if outside:
        raise EngineError(
            "invalid_request",
            f"{param} holds token ids outside this model's vocabulary (0..{vocab_size - 1}): {outside[:5]}",
            param,
        )
    if not ids:
        raise EngineError("invalid_request", f"{param} is empty; send at least one token", param)


def chat_prompt_ids(tokenizer: Any, request: GenerationRequest, chat_template: str | None = None) -> list[int]:
    """Apply a Hugging Face tokenizer's chat template (or `chat_template`) to the request's messages and tools and
    return the prompt's token ids."""
    from jinja2 import TemplateError

    template = chat_template or getattr(tokenizer, "chat_template", None) or ""
    if (request.tools or _has_tool_messages(request.messages)) and "tool" not in template:
        raise EngineError(
            "invalid_request",
            "this model's chat template cannot show tools or tool messages to the model; leave `tools` out, or set "
            'chat_template = "hermes" (bundled) or a template that renders tools in the spec',
            "tools",
        )
    try:
        encoded = tokenizer.apply_chat_template(
            list(request.messages), tools=list(request.tools) or None, chat_template=chat_template,
            add_generation_prompt=True, tokenize=True,
        )  # fmt: skip
    except TemplateError as exc:  # templates raise on what they cannot render, e.g. roles out of order
        raise EngineError("invalid_request", f"the chat template rejected the messages: {exc}", "messages") from exc
    except (TypeError, ValueError) as exc:  # e.g. a template that adds a message's None content to a string
        raise EngineError(
            "invalid_request", f"the chat template could not render the messages: {exc}", "messages"
        ) from exc
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded  # Transformers 5 returns a BatchEncoding
    return list(ids)


def _has_tool_messages(messages: Any) -> bool:
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def _ignore_step(message: str) -> None:
    pass


class Engine(abc.ABC):
    """One loaded model. Lives inside one Ray Serve replica (or in-process in tests)."""

    def __init__(self, config: Any):
        self.config = config  # a runtime.plan.DeploymentPlan
        # Who hears of start-up steps (the replica shows them to `aana up`); set before start(), may be called from
        # any thread.
        self.on_step: Callable[[str], None] = _ignore_step

    def step(self, message: str) -> None:
        """Name what start() does now when it takes more than a moment ("loading the weights (513 MB)")."""
        self.on_step(message)

    @abc.abstractmethod
    async def start(self) -> None:
        """Load the model. Raise with a clear message when it cannot be loaded."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[Delta]:
        """Yield deltas of every choice (interleaved, in any order across choices); each choice's last delta has a
        finish_reason and the iterator ends once every choice has finished. Closing it early must stop the
        generation. Text-generating engines implement it; an embedding engine does not."""
        raise EngineError("invalid_request", f"model {self.config.model_id} does not generate text", "model")

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        """One vector per input, in order. Embedding engines implement it; raise EngineError for bad inputs (too
        long, token ids outside the vocabulary, a `dimensions` the model cannot give)."""
        raise EngineError("invalid_request", f"model {self.config.model_id} does not make embeddings", "model")

    async def check_health(self) -> None:  # noqa: B027 - optional: an engine that cannot fail need not override it
        """Raise when the engine can no longer serve; Ray then replaces the replica."""

    def load(self) -> dict[str, int]:
        """What the engine is doing now, e.g. {"running": 1, "waiting": 2}; shown by GET /health."""
        return {}

    async def shutdown(self) -> None:  # noqa: B027 - optional: an engine that holds nothing need not override it
        """Release what start() took."""
