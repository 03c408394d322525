"""What the in-process engine tests share: plans for the tiny model, requests, and reading a stream."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from dataclasses import replace
from typing import Any

from runtime.engines.base import Delta, GenerationParams, GenerationRequest
from runtime.engines.registry import ENGINES
from runtime.engines.transformers import TransformersEngine
from runtime.plan import DeploymentPlan, ModelSource
from runtime.spec import SamplingSpec

# enforce_eager: skipping torch.compile saves ~30 s on a cold compile cache; the flow under test is the same.
TEST_OPTIONS = {"vllm": {"enforce_eager": True}}


def make_plan(source: ModelSource, engine: str = "transformers", **overrides: Any) -> DeploymentPlan:
    """A one-replica CPU plan for `engine`; `options=` (a dict) overrides the engine's default options."""
    options = ENGINES[engine].options(**(TEST_OPTIONS.get(engine, {}) | overrides.pop("options", {})))
    plan = DeploymentPlan(
        model_id="tiny", engine=engine, source=source, tokenizer=None, chat_template=None, num_replicas=1,
        num_cpus=1.0, num_gpus=0.0, max_ongoing_requests=16, max_model_len=None, sampling=SamplingSpec(),
        options=options,
    )  # fmt: skip
    return replace(plan, **overrides)


def ask(content: str, requested: bool = True, request_id: str = "r", **params: Any) -> GenerationRequest:
    return GenerationRequest(
        request_id=request_id,
        messages=({"role": "user", "content": content},),
        params=GenerationParams(**params),
        max_tokens_requested=requested and params.get("max_tokens") is not None,
    )


async def collect(engine: Any, request: GenerationRequest) -> list[Delta]:
    return [delta async for delta in engine.generate(request)]


def text_of(deltas: list[Delta]) -> str:
    return "".join(d.text for d in deltas)


def assert_streams_then_finishes(deltas: list[Delta], max_tokens: int) -> None:
    """The engine contract for a run that hits max_tokens: several text deltas, running counts, one final delta."""
    assert len(deltas) >= 5
    assert [d.finish_reason for d in deltas[:-1]] == [None] * (len(deltas) - 1)
    assert deltas[-1].finish_reason == "length"
    assert all(d.text for d in deltas[:-1]), "a delta without text was streamed"
    counts = [d.completion_tokens for d in deltas]
    assert counts == sorted(counts) and counts[0] >= 1
    assert deltas[-1].completion_tokens == max_tokens
    assert len(text_of(deltas)) >= max_tokens


def run_async(test):
    """Run an async test in a fresh event loop (pytest-asyncio is not a dependency)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper


@contextlib.asynccontextmanager
async def running(plan):
    engine = TransformersEngine(plan)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.shutdown()
