"""OpenAI request -> engine GenerationRequest: the one place where wire fields become generation parameters.

The deployment's sampling defaults fill what the request leaves out. A field the chosen engine cannot honour is a
400 naming that field, never silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Set
from typing import Any

from runtime.engines.base import GenerationParams, GenerationRequest, StructuredOutput
from runtime.model_api import ModelCard
from runtime.openai.errors import APIError
from runtime.openai.protocol import ChatCompletionRequest, ChatMessage, CompletionRequest, ResponseFormatJSONSchema
from runtime.openai.schemas import check_schema
from runtime.openai.tools import ToolUse
from runtime.spec import SamplingSpec

# The spec's sampling defaults that a request field of the same name overrides one to one (max_tokens and stop
# have rules of their own below).
_SAMPLING_FIELDS = tuple(name for name in SamplingSpec.model_fields if name not in ("max_tokens", "stop"))
# What the OpenAI API does when neither the request nor the spec sets a temperature.
OPENAI_DEFAULT_TEMPERATURE = 1.0
# Accepted only in their neutral form unless the engine supports them (some have no generation parameter yet).
_GATED_FEATURES = ("ignore_eos", "logit_bias", "logprobs", "top_logprobs", "tools")
MAX_LOGIT_BIAS = 100  # OpenAI's bound on each bias
MAX_LOGIT_BIAS_ENTRIES = 1024


def to_generation_request(
    request: ChatCompletionRequest, request_id: str, card: ModelCard, tools: ToolUse | None = None
) -> GenerationRequest:
    """The engine's request for `card`'s model: the request's fields, else the spec's defaults, else the API's.
    `tools`: the request's tool use (runtime.openai.tools.plan_tools), which may constrain the output."""
    _check_logprobs(request)
    requested_max = request.max_completion_tokens or request.max_tokens
    params = _params(
        request,
        card,
        requested_max,
        logprobs=(request.top_logprobs or 0) if request.logprobs else None,
        structured=tools.constraint if tools and tools.constraint else _structured(request),
    )
    return GenerationRequest(
        request_id=request_id,
        messages=tuple(_flatten(i, m) for i, m in enumerate(request.messages)),
        params=params,
        max_tokens_requested=requested_max is not None,
        tools=tools.tools if tools else (),
    )


# What OpenAI and vLLM generate for a /v1/completions request that names no max_tokens (and no spec default).
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


def to_completion_requests(request: CompletionRequest, request_id: str, card: ModelCard) -> list[GenerationRequest]:
    """One engine request per prompt of a /v1/completions request (no chat template: the prompt is the text)."""
    if request.suffix:
        raise APIError(400, f"suffix (fill-in-the-middle) is not supported by the {card.engine} engine; leave it out",
                       param="suffix")  # fmt: skip
    if request.best_of not in (None, request.n or 1):
        raise APIError(400, "best_of must equal n: this server returns every choice it generates", param="best_of")
    prompts = _prompts(request.prompt)
    if request.echo and request.logprobs is not None:
        raise APIError(400, "echo with logprobs would need the prompt's logprobs, which this server does not "
                       "compute; leave out one of them", param="echo")  # fmt: skip
    if request.echo and not all(isinstance(p, str) for p in prompts):
        raise APIError(400, "echo needs the prompt as text; send a string prompt or leave echo out", param="echo")
    params = _params(
        request, card, request.max_tokens, logprobs=request.logprobs, structured=None, prompts=len(prompts),
        default_max=COMPLETIONS_DEFAULT_MAX_TOKENS,
    )  # fmt: skip
    return [
        GenerationRequest(
            request_id=f"{request_id}-{i}",
            messages=(),
            params=params,
            max_tokens_requested=request.max_tokens is not None,
            prompt=prompt,
        )
        for i, prompt in enumerate(prompts)
    ]


def _prompts(prompt: str | list[Any]) -> list[str | tuple[int, ...]]:
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt[0], int):
        return [tuple(prompt)]
    return [p if isinstance(p, str) else tuple(p) for p in prompt]


def _params(
    request: Any, card: ModelCard, requested_max: int | None, logprobs: int | None,
    structured: StructuredOutput | None, prompts: int = 1, default_max: int | None = None,
) -> GenerationParams:  # fmt: skip
    """The sampling fields that chat and completions requests share, merged with the spec's defaults."""
    defaults = card.sampling
    _reject_unsupported(request, card.supports, card.engine)
    values: dict[str, Any] = {}
    for name in _SAMPLING_FIELDS:
        value = getattr(request, name)
        values[name] = value if value is not None else defaults.get(name)
    if values["temperature"] is None:
        values["temperature"] = OPENAI_DEFAULT_TEMPERATURE
    values["max_tokens"] = requested_max or defaults.get("max_tokens") or default_max
    stop = request.stop if request.stop is not None else defaults.get("stop")
    values["stop"] = tuple([stop] if isinstance(stop, str) else (stop or ()))
    values["ignore_eos"] = bool(request.ignore_eos)
    values["n"] = request.n or 1
    values["logprobs"] = logprobs
    values["logit_bias"] = _logit_bias(request.logit_bias)
    values["structured"] = structured
    logprobs_param = "logprobs" if isinstance(request, CompletionRequest) else "top_logprobs"
    _check_budget(values["n"], values["max_tokens"], values["logprobs"], card, prompts, logprobs_param)
    return GenerationParams(**values)


def _structured(request: ChatCompletionRequest) -> StructuredOutput | None:
    response_format = request.response_format
    if response_format is None or response_format.type == "text":
        return None
    if not isinstance(response_format, ResponseFormatJSONSchema):
        return StructuredOutput(None)  # json_object: any JSON object
    schema = response_format.json_schema.schema_
    param = "response_format.json_schema.schema"
    if schema is None:
        raise APIError(400, f"{param} is required: send the JSON Schema the reply must follow", param=param)
    check_schema(schema, param)
    return StructuredOutput(json.dumps(schema))


def _logit_bias(bias: dict[str, float] | None) -> tuple[tuple[int, float], ...]:
    """OpenAI's {"token id": bias} -> (id, bias) pairs; ids must be integers and biases within [-100, 100]. Whether
    an id is in the model's vocabulary is the engine's check."""
    if not bias:
        return ()
    if len(bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise APIError(400, f"logit_bias may hold at most {MAX_LOGIT_BIAS_ENTRIES} entries", param="logit_bias")
    pairs = []
    for key, value in bias.items():
        if not key.isascii() or not key.isdigit():
            raise APIError(400, f"logit_bias keys must be token ids (integers as strings), not {key[:40]!r}",
                           param="logit_bias")  # fmt: skip
        if not -MAX_LOGIT_BIAS <= value <= MAX_LOGIT_BIAS:
            raise APIError(400, f"logit_bias values must be within [-100, 100]; token {key} has {value}",
                           param="logit_bias")  # fmt: skip
        pairs.append((int(key), float(value)))
    return tuple(sorted(pairs))


def _check_budget(
    n: int, max_tokens: int | None, logprobs: int | None, card: ModelCard, prompts: int, logprobs_param: str
) -> None:
    """One request may not ask for more work than the model's limits allow (a 400 naming the fields), so a small
    request body cannot make a huge response that starves everyone else."""
    tokens = max_tokens  # the request's, else the spec's default; none at all: the context bounds it
    if tokens is None:
        return
    limits = card.limits
    factors = ([f"prompts ({prompts})"] if prompts > 1 else []) + ([f"n ({n})"] if n > 1 else [])
    factors.append(f"max_tokens ({tokens})")
    total = prompts * n * tokens
    if total > limits.max_tokens_per_request:
        raise APIError(
            400,
            f"{' x '.join(factors)} = {total} tokens is more than one request may ask of {card.id} "
            f"({limits.max_tokens_per_request}); lower {_or(factors)}",
            param="n" if n > 1 else "max_tokens",
        )
    entries = total * (1 + logprobs) if logprobs is not None else 0
    if entries > limits.max_logprobs_per_request:
        raise APIError(
            400,
            f"{' x '.join(factors)} x (1 + logprobs ({logprobs})) = {entries} logprob entries is more than one "
            f"request may ask of {card.id} ({limits.max_logprobs_per_request}); lower the number of logprobs, "
            f"{_or(factors)}",
            param=logprobs_param,
        )


def _or(factors: list[str]) -> str:
    names = [f.split(" (")[0] for f in factors]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def _check_logprobs(request: ChatCompletionRequest) -> None:
    # top_logprobs=0 asks for nothing, so it is accepted alone, as vLLM does.
    if request.top_logprobs and not request.logprobs:
        raise APIError(
            400, "`top_logprobs` requires `logprobs` to be true; set logprobs=true or leave top_logprobs out",
            param="top_logprobs",
        )  # fmt: skip


def _reject_unsupported(request: Any, supports: Set[str], engine: str) -> None:
    for name in _SAMPLING_FIELDS:
        if getattr(request, name) is not None and name not in supports:
            raise APIError(400, f"`{name}` is not supported by the {engine} engine; leave it out", param=name)
    if request.n not in (None, 1) and "n" not in supports:
        raise APIError(400, f"n={request.n} is not supported by the {engine} engine; use n=1", param="n")
    for name in _GATED_FEATURES:
        value = getattr(request, name, None)
        if value not in (None, False, {}, []) and name not in supports:
            raise APIError(400, f"`{name}` is not supported by the {engine} engine yet; leave it out", param=name)
    response_format = getattr(request, "response_format", None)
    if response_format and response_format.type != "text" and "response_format" not in supports:
        raise APIError(400, f"structured output (response_format) is not supported by the {engine} engine",
                       param="response_format")  # fmt: skip


def _flatten(index: int, message: ChatMessage) -> dict[str, Any]:
    """A message as chat templates read it: text parts joined with newlines (as vLLM does); `developer` is the newer
    name of `system`; tool calls' arguments as objects (templates write them with `tojson`)."""
    where = f"messages[{index}]"
    content = message.content if message.content is not None else message.refusal
    if message.role == "tool" and not message.tool_call_id:
        raise APIError(400, f"{where}.tool_call_id is required for a tool message", param=f"{where}.tool_call_id")
    if message.tool_call_id is not None and message.role != "tool":
        raise APIError(400, f"{where}.tool_call_id is only allowed on tool messages", param=f"{where}.tool_call_id")
    if message.tool_calls and message.role != "assistant":
        raise APIError(400, f"{where}.tool_calls is only allowed on assistant messages", param=f"{where}.tool_calls")
    if content is None and not message.tool_calls:
        raise APIError(400, f"{where}.content is required", param=f"{where}.content")
    text = "" if content is None else content if isinstance(content, str) else "\n".join(p.text for p in content)
    flat: dict[str, Any] = {"role": "system" if message.role == "developer" else message.role, "content": text}
    if message.tool_call_id is not None:
        flat["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        flat["tool_calls"] = [_call(call, f"{where}.tool_calls[{i}]") for i, call in enumerate(message.tool_calls)]
    return flat


def _call(call: Any, where: str) -> dict[str, Any]:
    try:
        arguments = json.loads(call.function.arguments)
    except ValueError:
        arguments = None
    if not isinstance(arguments, dict):
        raise APIError(400, f"{where}.function.arguments must be a JSON object as text",
                       param=f"{where}.function.arguments")  # fmt: skip
    return {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": arguments}}
