"""The Transformers engine's per-request controls on the tiny random Llama: structured output (xgrammar), n choices,
logprobs, logit_bias, presence and frequency penalties, and tools through the chat template.

Random weights say nothing about quality; what is checked is that each control does what its definition says: the
text follows the schema, biased tokens win, penalties change repeats, logprobs are the model's own.
"""

from __future__ import annotations

import json
import math

import jsonschema
import pytest
from engine.helpers import ask, collect, run_async, running, text_of

from runtime.engines.base import EngineError, GenerationParams, GenerationRequest, StructuredOutput
from runtime.plan import _resolve_template

NESTED_SCHEMA = {
    "type": "object",
    "properties": {
        "color": {"enum": ["red", "green", "blue"]},
        "count": {"type": "integer", "minimum": 0, "maximum": 99},
        "tags": {"type": "array", "items": {"enum": ["x", "y"]}, "maxItems": 3},
        "inner": {
            "type": "object",
            "properties": {"ok": {"type": "boolean"}, "name": {"type": "string", "maxLength": 8}},
            "required": ["ok", "name"],
            "additionalProperties": False,
        },
    },
    "required": ["color", "count", "tags", "inner"],
    "additionalProperties": False,
}


def by_choice(deltas, n):
    return ["".join(d.text for d in deltas if d.index == i) for i in range(n)]


@run_async
async def test_json_schema_output_parses_and_validates_greedy_and_sampled(tiny_plan):
    structured = StructuredOutput(json.dumps(NESTED_SCHEMA))
    async with running(tiny_plan()) as engine:
        greedy = await collect(engine, ask("Hi", max_tokens=300, temperature=0, structured=structured))
        sampled = await collect(engine, ask("Hi", max_tokens=300, temperature=1.0, seed=3, n=2, structured=structured))
    for text in [text_of(greedy), *by_choice(sampled, 2)]:
        jsonschema.validate(json.loads(text), NESTED_SCHEMA)
    assert greedy[-1].finish_reason == "stop"  # the grammar ended, then end-of-sequence was the only choice


@run_async
async def test_json_object_output_is_an_object(tiny_plan):
    async with running(tiny_plan()) as engine:
        deltas = await collect(
            engine, ask("Hi", max_tokens=300, temperature=0.7, seed=1, structured=StructuredOutput())
        )
    assert isinstance(json.loads(text_of(deltas)), dict)


@run_async
async def test_without_a_schema_the_same_request_is_not_json(tiny_plan):
    """The control run: the grammar is what makes the text JSON, not the model."""
    async with running(tiny_plan()) as engine:
        deltas = await collect(engine, ask("Hi", max_tokens=60, temperature=0))
    with pytest.raises(ValueError):
        json.loads(text_of(deltas))


@run_async
async def test_n_with_seed_gives_that_many_choices_reproducibly(tiny_plan):
    async with running(tiny_plan()) as engine:
        first = await collect(engine, ask("Hi", max_tokens=12, temperature=1.0, seed=7, n=3))
        again = await collect(engine, ask("Hi", max_tokens=12, temperature=1.0, seed=7, n=3))
        single = await collect(engine, ask("Hi", max_tokens=12, temperature=1.0, seed=8))
    texts = by_choice(first, 3)
    assert texts == by_choice(again, 3)
    assert len(set(texts)) == 3  # each choice has its own generator
    assert texts[1] == text_of(single)  # choice i is seeded seed + i, as vLLM does
    finals = [d for d in first if d.finish_reason]
    assert sorted(d.index for d in finals) == [0, 1, 2] and first[-1].finish_reason


@run_async
async def test_greedy_n_gives_identical_choices(tiny_plan):
    async with running(tiny_plan()) as engine:
        deltas = await collect(engine, ask("Hi", max_tokens=10, temperature=0, n=3))
        one = await collect(engine, ask("Hi", max_tokens=10, temperature=0))
    assert by_choice(deltas, 3) == [text_of(one)] * 3
    assert {d.completion_tokens for d in deltas if d.finish_reason} == {10}


@run_async
async def test_logprobs_are_the_models_own_one_per_token_with_top_k(tiny_plan):
    import torch

    async with running(tiny_plan()) as engine:
        deltas = await collect(engine, ask("Hi", max_tokens=6, temperature=0, logprobs=3))
        tokenizer, model = engine._loaded.tokenizer, engine._loaded.model
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True)
    entries = [entry for d in deltas for entry in d.logprobs]
    assert len(entries) == deltas[-1].completion_tokens == 6
    assert all(len(e.top_logprobs) == 3 for e in entries)
    for e in entries:  # greedy: the chosen token is the most likely one
        assert e.token == e.top_logprobs[0].token and e.logprob == pytest.approx(e.top_logprobs[0].logprob)
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert e.bytes == list(e.token.encode())
    with torch.no_grad():
        logits = model(torch.tensor([list(prompt["input_ids"])])).logits[0, -1]
    assert entries[0].logprob == pytest.approx(float(logits.log_softmax(-1).max()), abs=1e-4)
    assert all(e.logprob <= 0 and math.isfinite(e.logprob) for e in entries)


@run_async
async def test_logit_bias_makes_a_token_win_and_out_of_vocab_ids_are_refused(tiny_plan):
    async with running(tiny_plan()) as engine:
        tokenizer = engine._loaded.tokenizer
        token_id = tokenizer("x", add_special_tokens=False)["input_ids"][0]
        deltas = await collect(engine, ask("Hi", max_tokens=5, temperature=0, logit_bias=((token_id, 100.0),)))
        with pytest.raises(EngineError) as caught:
            await collect(engine, ask("Hi", max_tokens=5, logit_bias=((10**6, 5.0),)))
    assert text_of(deltas) == tokenizer.decode([token_id] * 5)
    assert caught.value.kind == "invalid_request" and caught.value.param == "logit_bias"


@run_async
async def test_frequency_and_presence_penalties_reduce_repeats(tiny_plan):
    async with running(tiny_plan()) as engine:
        plain = await collect(engine, ask("Hi", max_tokens=40, temperature=0, ignore_eos=True))
        penalised = await collect(
            engine,
            ask("Hi", max_tokens=40, temperature=0, ignore_eos=True, frequency_penalty=2.0, presence_penalty=2.0),
        )
        tokenizer = engine._loaded.tokenizer

    def distinct(deltas):
        return len(set(tokenizer(text_of(deltas), add_special_tokens=False)["input_ids"]))

    assert text_of(plain) != text_of(penalised)
    assert distinct(penalised) > distinct(plain)


@run_async
async def test_tools_reach_the_template_and_a_template_without_tools_refuses_them(tiny_plan, tmp_path):
    hermes = _resolve_template("hermes", tmp_path, "chat_template", [])
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    messages = (
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
        ]},
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
    )  # fmt: skip
    request = GenerationRequest("r", messages, GenerationParams(max_tokens=3), tools=(tool,))
    async with running(tiny_plan(chat_template=hermes, max_model_len=1024)) as engine:  # the tool text is long
        prompt = engine._loaded.tokenizer.apply_chat_template(
            list(messages), tools=[tool], add_generation_prompt=True, tokenize=False
        )
        deltas = await collect(engine, request)
        prompt_tokens = len(engine._loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert '<tools>\n{"type": "function", "function": {"name": "get_weather"' in prompt
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' in prompt
    assert "<tool_response>\nsunny\n</tool_response>" in prompt
    assert deltas[-1].prompt_tokens == prompt_tokens
    async with running(tiny_plan()) as engine:  # the tiny model's own template is plain ChatML
        with pytest.raises(EngineError) as caught:
            await collect(engine, request)
    assert caught.value.param == "tools" and 'chat_template = "hermes"' in caught.value.message
