"""`aana up` on a tiny random Llama through the real Transformers engine, over the wire with the official client.

One server for the module (Ray start + deploy is ~15 s here). Random weights make content meaningless, so the tests
assert on flow, counts and consistency between calls, never on what the text says.
"""

from __future__ import annotations

import json
import threading

import httpx
import openai
import pytest
from e2e.server import serving, wait_until_idle
from transformers import AutoTokenizer

pytestmark = pytest.mark.e2e

QUESTION = [{"role": "user", "content": "Tell me a story about a dragon."}]


@pytest.fixture(scope="module")
def server(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("spec")
    spec = folder / "tiny.toml"
    spec.write_text(
        f"""
name = "tiny-app"
[deployments.tiny]
engine = "transformers"
model = "{tiny_model_dir}"
num_cpus = 0.5
max_model_len = 256
[deployments.tiny.sampling]
max_tokens = 24
"""
    )
    with serving(spec, folder) as server:
        yield server
    assert "stopped" in server.output()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(api_key="x", base_url=server.base_url, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def _greedy(client, **kwargs):
    kwargs.setdefault("messages", QUESTION)
    return client.chat.completions.create(model="tiny", temperature=0, **kwargs)


def test_the_seed_base_url_without_v1_and_with_v1_both_work(server, client):
    with_v1 = openai.OpenAI(api_key="x", base_url=server.base_url + "/v1", max_retries=0)
    assert _greedy(client).choices[0].message.content == _greedy(with_v1).choices[0].message.content


def test_usage_matches_the_tokenizer(client, tokenizer):
    response = _greedy(client, max_tokens=10)
    prompt_ids = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True)
    if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "input_ids"):
        prompt_ids = prompt_ids["input_ids"]
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.completion_tokens == 10
    assert response.usage.total_tokens == len(prompt_ids) + 10
    assert response.choices[0].finish_reason == "length"
    assert response.model == "tiny" and response.id.startswith("chatcmpl-")


def test_spec_default_max_tokens_fills_in(client):
    # The tiny model never picks EOS greedily (tests/tiny_model.py): only max_tokens can end the answer.
    response = _greedy(client)
    assert (response.choices[0].finish_reason, response.usage.completion_tokens) == ("length", 24)


def test_stream_equals_non_stream(client):
    full = _greedy(client, max_tokens=16)
    chunks = list(_greedy(client, max_tokens=16, stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [full.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3  # really streamed


def test_stop_sequence_is_honoured_and_not_included(client):
    text = _greedy(client, max_tokens=24).choices[0].message.content
    assert len(text) > 6
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    expected = text[: text.index(stop)]
    for stream in (False, True):
        response = _greedy(client, max_tokens=24, stop=[stop], stream=stream)
        if stream:
            chunks = list(response)
            got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason][-1]
        else:
            got, finish = response.choices[0].message.content, response.choices[0].finish_reason
        assert got == expected and stop not in got
        assert finish == "stop"


def test_same_seed_same_text(client):
    def sample(seed):
        return (
            client.chat.completions.create(model="tiny", messages=QUESTION, temperature=1.0, seed=seed, max_tokens=20)
            .choices[0]
            .message.content
        )

    assert sample(7) == sample(7)
    assert len({sample(s) for s in (1, 2, 3)}) > 1  # sampling really samples


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="nope", messages=QUESTION)
    assert "tiny" in caught.value.message


def test_two_concurrent_streams_complete_intact(client):
    prompts = [[{"role": "user", "content": "Hello, how are you?"}], [{"role": "user", "content": "Numbers: 1 2 3"}]]
    expected = [_greedy(client, messages=p, max_tokens=20).choices[0].message.content for p in prompts]
    results: list[str | None] = [None, None]

    def run(i):
        stream = _greedy(client, messages=prompts[i], max_tokens=20, stream=True)
        results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert results == expected


def test_dropped_stream_does_not_stall_the_next_request(server, client):
    before = _greedy(client, max_tokens=5).choices[0].message.content
    body = {"model": "tiny", "messages": QUESTION, "stream": True, "max_tokens": 200, "temperature": 0}
    with httpx.stream("POST", f"{server.base_url}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()  # kept referenced: a closed line iterator closes the connection
        for _ in range(4):
            next(lines)
    # Leaving the block hangs up mid-stream. A model lock left held would make the next request wait forever (the
    # client's timeout ends it); a dying generation mixed into it would change its text.
    after = _greedy(client, max_tokens=5)
    assert after.usage.completion_tokens == 5 and after.choices[0].message.content == before
    wait_until_idle(server, "tiny")


def test_raw_http_errors_use_the_openai_envelope(server):
    url = f"{server.base_url}/v1/chat/completions"
    bad = httpx.post(url, json={"model": "tiny", "messages": QUESTION, "temperature": 5}, timeout=30)
    assert bad.status_code == 400
    assert bad.json()["error"]["param"] == "temperature"
    empty = httpx.post(url, json={"model": "tiny", "messages": []}, timeout=30)
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "messages"
    long = httpx.post(
        url, json={"model": "tiny", "messages": [{"role": "user", "content": "dragon " * 400}]}, timeout=30
    )
    assert long.status_code == 400
    error = long.json()["error"]
    assert error["code"] == "context_length_exceeded" and "256" in error["message"]


def test_models_and_health(server):
    models = httpx.get(f"{server.base_url}/v1/models", timeout=10).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    health = httpx.get(f"{server.base_url}/health", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_stream_sse_framing_over_raw_http(server):
    body = {"model": "tiny", "messages": QUESTION, "stream": True, "max_tokens": 4, "temperature": 0}
    with httpx.stream("POST", f"{server.base_url}/chat/completions", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2][6:])
    assert last["choices"][0]["finish_reason"] == "length"
