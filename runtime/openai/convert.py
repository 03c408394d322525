"""OpenAI request -> engine GenerationRequest: the one place where wire fields become generation parameters.

The deployment's sampling defaults fill what the request leaves out. A field the chosen engine cannot honour is a
400 naming that field, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Set
from typing import Any

from runtime.engines.base import GenerationParams, GenerationRequest
from runtime.model_api import ModelCard
from runtime.openai.errors import APIError
from runtime.openai.protocol import ChatCompletionRequest, ChatMessage
from runtime.spec import SamplingSpec

# The spec's sampling defaults that a request field of the same name overrides one to one (max_tokens and stop
# have rules of their own below).
_SAMPLING_FIELDS = tuple(name for name in SamplingSpec.model_fields if name not in ("max_tokens", "stop"))
# What the OpenAI API does when neither the request nor the spec sets a temperature.
OPENAI_DEFAULT_TEMPERATURE = 1.0
# Accepted only in their neutral form unless the engine supports them (some have no generation parameter yet).
_GATED_FEATURES = (
    "ignore_eos",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
)


def to_generation_request(request: ChatCompletionRequest, request_id: str, card: ModelCard) -> GenerationRequest:
    """The engine's request for `card`'s model: the request's fields, else the spec's defaults, else the API's."""
    defaults = card.sampling
    _check_logprobs(request)
    _reject_unsupported(request, card.supports, card.engine)
    values: dict[str, Any] = {}
    for name in _SAMPLING_FIELDS:
        value = getattr(request, name)
        values[name] = value if value is not None else defaults.get(name)
    requested_max = request.max_completion_tokens or request.max_tokens
    if values["temperature"] is None:
        values["temperature"] = OPENAI_DEFAULT_TEMPERATURE
    values["max_tokens"] = requested_max or defaults.get("max_tokens")
    stop = request.stop if request.stop is not None else defaults.get("stop")
    values["stop"] = tuple([stop] if isinstance(stop, str) else (stop or ()))
    values["ignore_eos"] = bool(request.ignore_eos)
    values["n"] = request.n or 1
    values["logprobs"] = (request.top_logprobs or 0) if request.logprobs else None
    _check_budget(values["n"], values["max_tokens"], values["logprobs"], card)
    return GenerationRequest(
        request_id=request_id,
        messages=tuple(_flatten(i, m) for i, m in enumerate(request.messages)),
        params=GenerationParams(**values),
        max_tokens_requested=requested_max is not None,
    )


def _check_budget(n: int, max_tokens: int | None, logprobs: int | None, card: ModelCard) -> None:
    """One request may not ask for more work than the model's limits allow (a 400 naming the fields), so a small
    request body cannot make a huge response that starves everyone else."""
    tokens = max_tokens  # the request's, else the spec's default; none at all: the context bounds it
    if tokens is None:
        return
    limits = card.limits
    if n * tokens > limits.max_tokens_per_request:
        asked = f"n x max_tokens = {n} x {tokens} = {n * tokens}" if n > 1 else f"max_tokens = {tokens}"
        raise APIError(
            400,
            f"{asked} tokens is more than one request may ask of {card.id} ({limits.max_tokens_per_request}); lower "
            f"{'n or max_tokens' if n > 1 else 'max_tokens'}",
            param="n" if n > 1 else "max_tokens",
        )
    if logprobs is not None and n * tokens * (1 + logprobs) > limits.max_logprobs_per_request:
        raise APIError(
            400,
            f"n x max_tokens x (1 + top_logprobs) = {n} x {tokens} x {1 + logprobs} = {n * tokens * (1 + logprobs)} "
            f"logprob entries is more than one request may ask of {card.id} ({limits.max_logprobs_per_request}); "
            "lower top_logprobs, n or max_tokens",
            param="top_logprobs",
        )


def _check_logprobs(request: ChatCompletionRequest) -> None:
    # top_logprobs=0 asks for nothing, so it is accepted alone, as vLLM does.
    if request.top_logprobs and not request.logprobs:
        raise APIError(
            400, "`top_logprobs` requires `logprobs` to be true; set logprobs=true or leave top_logprobs out",
            param="top_logprobs",
        )  # fmt: skip


def _reject_unsupported(request: ChatCompletionRequest, supports: Set[str], engine: str) -> None:
    for name in _SAMPLING_FIELDS:
        if getattr(request, name) is not None and name not in supports:
            raise APIError(400, f"`{name}` is not supported by the {engine} engine; leave it out", param=name)
    if request.n not in (None, 1) and "n" not in supports:
        raise APIError(400, f"n={request.n} is not supported by the {engine} engine; use n=1", param="n")
    for name in _GATED_FEATURES:
        value = getattr(request, name)
        if value not in (None, False, {}, []) and name not in supports:
            raise APIError(400, f"`{name}` is not supported by the {engine} engine yet; leave it out", param=name)
    if request.response_format and request.response_format.get("type") != "text":
        raise APIError(
            400,
            'only response_format {"type": "text"} is supported; structured output is not available yet',
            param="response_format",
        )


def _flatten(index: int, message: ChatMessage) -> dict[str, str]:
    """Text parts are joined with newlines (as vLLM does); `developer` is the newer name of `system`."""
    content = message.content
    if content is None:
        raise APIError(400, f"messages[{index}].content is required", param=f"messages[{index}].content")
    text = content if isinstance(content, str) else "\n".join(part.text for part in content)
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": text}
