"""The HTTP layer over in-process echo replicas: routes, request validation -> 400 envelopes, status codes, SSE.

No Ray: the app is built over `ModelServer`s (the replica class Ray Serve runs) instead of deployment handles.
The echo engine is scripted (`enqueue`) and records what it received (`history`).
"""

import json
import threading
import time

import pytest
from fastapi.testclient import TestClient
from in_process import start_servers

from runtime.engines.base import EngineError, GenerationParams, GenerationRequest
from runtime.openai.ingress import Admission, create_app
from runtime.plan import build_plan
from runtime.spec import parse_spec

SPEC = """
name = "t"
[deployments.echo]
engine = "echo"
max_model_len = 64
[deployments.echo.sampling]
max_tokens = 5
[deployments.other]
engine = "echo"
"""


def _servers(spec=SPEC):
    return start_servers(build_plan(parse_spec(spec)))


def _client(api_key=None, servers=None, on_record=None, admission=None, spec=SPEC):
    servers = servers or _servers()
    cards = build_plan(parse_spec(spec)).cards
    return TestClient(create_app(servers, cards, api_key=api_key, admission=admission, on_record=on_record))


@pytest.fixture(scope="module")
def client():
    return _client()


def _chat(client, path="/v1/chat/completions", **body):
    body.setdefault("model", "echo")
    body.setdefault("messages", [{"role": "user", "content": "one two three"}])
    return client.post(path, json=body)


def _error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/chat/completions"])
def test_completion_on_both_paths(client, path):
    response = _chat(client, path)
    assert response.status_code == 200
    body = response.json()
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "one two three"}
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] == 3
    assert response.headers["x-request-id"] == body["id"]


def test_spec_default_max_tokens_applies_and_request_overrides_it(client):
    words = " ".join(f"w{i}" for i in range(10))
    default = _chat(client, messages=[{"role": "user", "content": words}]).json()
    assert default["usage"]["completion_tokens"] == 5 and default["choices"][0]["finish_reason"] == "length"
    more = _chat(client, messages=[{"role": "user", "content": words}], max_completion_tokens=8).json()
    assert more["usage"]["completion_tokens"] == 8


def test_stop_sequence_is_not_included(client):
    body = _chat(client, messages=[{"role": "user", "content": "a b STOP c"}], stop=["STOP"]).json()
    assert body["choices"][0]["message"]["content"] == "a b "
    assert body["choices"][0]["finish_reason"] == "stop"


def test_text_parts_and_developer_role(client):
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "x"}, {"type": "text", "text": "y"}]},
    ]
    assert _chat(client, messages=messages).json()["choices"][0]["message"]["content"] == "x y"


def test_stream_is_sse_with_one_id(client):
    with client.stream("POST", "/v1/chat/completions", json={
        "model": "echo", "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "a b"}],
    }) as response:  # fmt: skip
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line[6:]) for line in lines[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"]) == "a b"
    assert chunks[-1]["usage"]["completion_tokens"] == 2


def test_models_listed_on_both_paths(client):
    for path in ("/v1/models", "/models"):
        body = client.get(path).json()
        assert body["object"] == "list"
        assert [m["id"] for m in body["data"]] == ["echo", "other"]


def test_unknown_model_is_404_listing_valid_ids(client):
    error = _error(_chat(client, model="gpt-9"), 404)
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "echo, other" in error["message"]


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"messages": []}, "messages", "at least one"),
        ({"messages": None}, "messages", "messages"),
        ({"temperature": 3}, "temperature", "less than or equal to 2"),
        ({"temperature": "hot"}, "temperature", "number"),
        ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
        ({"frobnicate": 1}, "frobnicate", "Unrecognized request argument"),
        ({"messages": [{"role": "wizard", "content": "x"}]}, "messages[0].role", "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image", "x": 1}]}]}, "messages[0].content", "content"),
        ({"messages": [{"role": "user"}]}, "messages[0].content", "required"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4"),
        ({"n": 0}, "n", "greater than or equal to 1"),
        ({"top_logprobs": 2}, "top_logprobs", "requires `logprobs` to be true"),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "less than or equal to 20"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice", "needs a tool-call parser"),
        ({"tool_choice": "required"}, "tool_choice", "needs `tools`"),
        ({"logit_bias": {"abc": -100}}, "logit_bias", "token ids"),
        ({"logit_bias": {"5": 101}}, "logit_bias", "[-100, 100]"),
        ({"response_format": {"type": "xml"}}, "response_format", "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"not": {}}}}},
            "response_format.json_schema.schema",
            "'not'",
        ),
        ({"stream_options": {"include_usage": True}}, "stream_options", "stream=true"),
    ],
)
def test_invalid_requests_are_400_naming_the_param(client, body, param, words):
    error = _error(_chat(client, **body), 400)
    assert error["param"] == param
    assert words in error["message"]
    assert error["type"] == "invalid_request_error"


def test_missing_model_field_is_400(client):
    error = _error(client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "x"}]}), 400)
    assert error["param"] == "model" and "Missing required parameter" in error["message"]


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]"])
def test_body_that_is_not_a_json_object_is_400(client, raw):
    response = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert "JSON" in _error(response, 400)["message"]


def test_prompt_longer_than_context_is_400_with_numbers(client):
    error = _error(_chat(client, messages=[{"role": "user", "content": "w " * 100}]), 400)
    assert error["code"] == "context_length_exceeded"
    assert "64" in error["message"] and "102" in error["message"]


def test_requested_completion_that_does_not_fit_is_400(client):
    error = _error(_chat(client, max_tokens=63), 400)
    assert "68 tokens (5 in the messages, 63 in the completion)" in error["message"]


def test_wrong_path_and_method_use_the_envelope(client):
    assert "/v1/chat/completions" in _error(client.get("/v1/nope"), 404)["message"]
    _error(client.put("/v1/chat/completions"), 405)
    # GET lists stored chat completions: this server keeps none, and says so.
    assert "store_completions is off" in _error(client.get("/v1/chat/completions"), 404)["message"]


def test_health_is_ok_when_every_model_is_ready(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "models": {
            "echo": {"status": "ready", "running": 0, "queued": 0},
            "other": {"status": "ready", "running": 0, "queued": 0},
        },
    }


def test_error_before_first_token_is_a_real_status():
    servers = _servers()
    servers["echo"].engine.enqueue([EngineError("unavailable", "replica died")])
    assert _error(_chat(_client(servers=servers), stream=True), 503)["message"] == "replica died"


def test_error_after_first_token_is_an_error_event():
    servers = _servers()
    servers["echo"].engine.enqueue(["a", EngineError("internal", "boom")])
    client = _client(servers=servers)
    with client.stream("POST", "/v1/chat/completions", json={
        "model": "echo", "stream": True, "messages": [{"role": "user", "content": "x"}],
    }) as response:  # fmt: skip
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    assert json.loads(lines[1][6:])["choices"][0]["delta"] == {"content": "a"}
    assert json.loads(lines[-2][6:])["error"]["message"] == "boom"
    assert lines[-1] == "data: [DONE]"
    assert servers["echo"].engine.running == 0


def test_an_engine_bug_is_500_without_traceback():
    servers = _servers()
    servers["echo"].engine.enqueue([KeyError("secret internals")])
    error = _error(_chat(_client(servers=servers)), 500)
    assert "KeyError" in error["message"] and "secret" not in error["message"] and "Traceback" not in error["message"]


def test_unexpected_exception_in_the_ingress_is_500_without_traceback():
    class Exploding:
        async def generate(self, request):
            raise KeyError("secret internals")
            yield  # pragma: no cover

        async def health(self):
            raise AssertionError("not called")

    cards = build_plan(parse_spec(SPEC)).cards
    client = TestClient(create_app({"echo": Exploding(), "other": Exploding()}, cards), raise_server_exceptions=False)
    error = _error(_chat(client), 500)
    assert "KeyError" in error["message"] and "secret" not in error["message"] and "Traceback" not in error["message"]


def test_health_is_503_with_the_reason():
    servers = _servers()
    servers["echo"].engine.unhealthy = "the engine core died"
    response = _client(servers=servers).get("/health")
    assert response.status_code == 503
    body = response.json()
    assert body["models"] == {
        "echo": {"status": "unavailable", "reason": "the engine core died"},
        "other": {"status": "ready", "running": 0, "queued": 0},
    }
    assert "echo: the engine core died" in body["error"]["message"]


def test_every_sampling_field_reaches_the_engine_exactly():
    servers = _servers()
    body = {
        "model": "echo",
        "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ],
        "temperature": 0.7, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "repetition_penalty": 1.1,
        "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": 1234, "max_completion_tokens": 7,
        "stop": ["END", "STOP"], "n": 2, "logprobs": True, "top_logprobs": 3,
    }  # fmt: skip
    response = _client(servers=servers).post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    (received,) = servers["echo"].engine.history
    assert received == GenerationRequest(
        request_id=response.json()["id"],
        messages=({"role": "system", "content": "be brief"}, {"role": "user", "content": "a\nb"}),
        params=GenerationParams(
            max_tokens=7, temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1,
            presence_penalty=0.5, frequency_penalty=-0.5, stop=("END", "STOP"), seed=1234, ignore_eos=False, n=2,
            logprobs=3,
        ),
        max_tokens_requested=True,
    )  # fmt: skip


def test_spec_defaults_fill_what_the_request_leaves_out():
    spec = SPEC.replace("max_tokens = 5", 'max_tokens = 5\ntemperature = 0.2\ntop_k = 3\nstop = ["x"]\nseed = 9')
    servers = _servers(spec)
    assert _chat(_client(servers=servers, spec=spec), top_k=4).status_code == 200
    (received,) = servers["echo"].engine.history
    assert received.params == GenerationParams(max_tokens=5, temperature=0.2, top_k=4, stop=("x",), seed=9)
    assert received.max_tokens_requested is False


def test_api_key_is_required_when_configured():
    client = _client(api_key="s3cret")
    error = _error(_chat(client), 401)
    assert error["code"] == "invalid_api_key" and error["type"] == "authentication_error"
    ok = client.post(
        "/v1/chat/completions",
        json={"model": "echo", "messages": [{"role": "user", "content": "x"}]},
        headers={"Authorization": "Bearer s3cret"},
    )
    assert ok.status_code == 200
    assert client.get("/health").status_code == 200  # health stays open for load balancers


def test_every_completion_is_recorded_with_its_numbers():
    records = []
    client = _client(on_record=records.append)
    body = _chat(client, messages=[{"role": "user", "content": "a b c"}]).json()
    with client.stream("POST", "/v1/chat/completions", json={
        "model": "echo", "stream": True, "messages": [{"role": "user", "content": "x y"}],
    }) as response:  # fmt: skip
        list(response.iter_lines())
    _chat(client, model="nope")
    _chat(client, temperature=9)
    plain, streamed, not_found, invalid = records
    assert (plain.id, plain.model, plain.status_code, plain.finish_reason) == (body["id"], "echo", 200, "stop")
    assert (plain.prompt_tokens, plain.completion_tokens, plain.stream) == (5, 3, False)
    assert plain.ttft_ms is not None and plain.latency_ms >= plain.ttft_ms
    assert (streamed.status_code, streamed.completion_tokens, streamed.stream) == (200, 2, True)
    assert (not_found.status_code, not_found.model, not_found.completion_tokens) == (404, "nope", 0)
    assert invalid.status_code == 400


def test_a_broken_recorder_never_fails_the_request():
    def explode(record):
        raise RuntimeError("database down")

    assert _chat(_client(on_record=explode)).status_code == 200


def test_draining_refuses_new_requests_and_counts_streams_in_flight():
    admission = Admission()
    client = _client(admission=admission)
    with client.stream("POST", "/v1/chat/completions", json={
        "model": "echo", "stream": True, "messages": [{"role": "user", "content": "x y"}],
    }) as response:  # fmt: skip
        assert admission.in_flight == 1
        list(response.iter_lines())
    assert admission.in_flight == 0
    admission.draining = True
    error = _error(_chat(client), 503)
    assert error["code"] == "draining" and admission.in_flight == 0


# ---------------------------------------------------------------------------------------------------------------
# Several choices (n) and logprobs, over HTTP with the echo engine


def _stream_chunks(client, **body):
    body.setdefault("model", "echo")
    body.setdefault("messages", [{"role": "user", "content": "one two three"}])
    with client.stream("POST", "/v1/chat/completions", json={"stream": True, **body}) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and lines.count("data: [DONE]") == 1
    return [json.loads(line[6:]) for line in lines[:-1]]


def test_n_choices_each_with_its_own_text_finish_and_usage_summed(client):
    body = _chat(client, n=2).json()
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "one two three"}, "logprobs": None,
         "finish_reason": "stop"},
        {"index": 1, "message": {"role": "assistant", "content": "two three one"}, "logprobs": None,
         "finish_reason": "stop"},
    ]  # fmt: skip
    assert body["usage"] == {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11}


def test_greedy_choices_are_identical(client):
    body = _chat(client, n=3, temperature=0).json()
    assert [c["message"]["content"] for c in body["choices"]] == ["one two three"] * 3


def test_each_choice_finishes_on_its_own(client):
    # Choice 1 says "b STOP c a": it stops after one word, while choice 0 runs on to max_tokens.
    body = _chat(client, n=2, messages=[{"role": "user", "content": "a b STOP c"}], stop=["STOP"], max_tokens=3).json()
    texts = [(c["message"]["content"], c["finish_reason"]) for c in body["choices"]]
    assert texts == [("a b ", "stop"), ("b ", "stop")]
    body = _chat(client, n=2, messages=[{"role": "user", "content": "a b c d"}], max_tokens=3).json()
    assert [(c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        ("a b c", "length"),
        ("b c d", "length"),
    ]
    assert body["usage"]["completion_tokens"] == 6


def _per_choice(wire):
    """(index, delta, finish_reason) chunks after the role chunks -> each choice's content, in order, and whether its
    one finish chunk came after all of its content. How many tokens a chunk carries depends on how fast the consumer
    reads (the replica coalesces what piles up), so tests compare per choice."""
    contents, finishes = {}, {}
    for position, (index, delta, finish) in enumerate(wire):
        if finish is not None:
            assert index not in finishes and delta == {}, wire
            finishes[index] = (position, finish)
        else:
            assert index not in finishes, f"content after the finish of choice {index}: {wire}"
            contents.setdefault(index, []).append(delta["content"])
    return {index: ("".join(parts), finishes[index][1]) for index, parts in contents.items()}


def test_stream_of_n_choices_follows_vllms_sequence(client):
    messages = [{"role": "user", "content": "a b"}]
    chunks = _stream_chunks(client, n=2, messages=messages, stream_options={"include_usage": True})
    assert len({c["id"] for c in chunks}) == 1
    wire = [(c["choices"][0]["index"], c["choices"][0]["delta"], c["choices"][0]["finish_reason"]) for c in chunks[:-1]]
    assert wire[:2] == [
        (0, {"role": "assistant", "content": ""}, None),
        (1, {"role": "assistant", "content": ""}, None),
    ]
    assert _per_choice(wire[2:]) == {0: ("a b", "stop"), 1: ("b a", "stop")}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}


def _token(token, logprob, top):
    data = list(token.encode())
    alternatives = [{"token": token, "logprob": logprob, "bytes": data}]
    for r in range(1, top):
        alternatives.append({"token": f"<alt{r}>", "logprob": logprob - r, "bytes": list(f"<alt{r}>".encode())})
    return {"token": token, "logprob": logprob, "bytes": data, "top_logprobs": alternatives[:top]}


def test_logprobs_one_entry_per_token_with_top_alternatives(client):
    body = _chat(client, logprobs=True, top_logprobs=2).json()
    (choice,) = body["choices"]
    expected = [_token("one", -0.1, 2), _token(" two", -0.2, 2), _token(" three", -0.3, 2)]
    assert choice["logprobs"] == {"content": expected}
    chosen_only = _chat(client, logprobs=True).json()["choices"][0]["logprobs"]["content"]
    assert [(e["token"], e["top_logprobs"]) for e in chosen_only] == [("one", []), (" two", []), (" three", [])]


def test_streamed_logprobs_ride_on_each_content_chunk_of_each_choice(client):
    chunks = _stream_chunks(client, n=2, logprobs=True, top_logprobs=1, messages=[{"role": "user", "content": "a b"}])
    content = [c["choices"][0] for c in chunks if c["choices"][0]["delta"].get("content")]
    per_choice = {}
    for choice in content:  # each chunk carries the logprobs of exactly the tokens of its text
        tokens = [entry["token"] for entry in choice["logprobs"]["content"]]
        assert "".join(tokens) == choice["delta"]["content"]
        per_choice.setdefault(choice["index"], []).extend(choice["logprobs"]["content"])
    assert per_choice == {
        0: [_token("a", -0.1, 1), _token(" b", -0.2, 1)],
        1: [_token("b", -0.1, 1), _token(" a", -0.2, 1)],
    }
    others = [c["choices"][0]["logprobs"] for c in chunks if not c["choices"][0]["delta"].get("content")]
    assert others == [None] * 4  # two role chunks, two finish chunks


def test_n_choices_are_recorded_with_summed_tokens():
    records = []
    _chat(_client(on_record=records.append), n=3)
    (record,) = records
    assert (record.status_code, record.finish_reason) == (200, "stop")
    assert (record.prompt_tokens, record.completion_tokens) == (5, 9)  # the prompt once, three choices of three


TRANSFORMERS_SPEC = """
name = "t"
[deployments.hf]
engine = "transformers"
model = "org/tiny"
"""


def test_the_transformers_engine_gets_choices_logprobs_bias_and_penalties():
    # The card says transformers (pure: no weights, no torch); an echo replica stands in for the model and records
    # what reached it.
    stand_in = _servers()["echo"]
    client = TestClient(create_app({"hf": stand_in}, build_plan(parse_spec(TRANSFORMERS_SPEC)).cards))
    body = {"n": 2, "logprobs": True, "top_logprobs": 2, "logit_bias": {"7": -5}, "presence_penalty": 0.5}
    assert _chat(client, model="hf", **body).status_code == 200
    [request] = stand_in.engine.history
    params = request.params
    assert (params.n, params.logprobs, params.logit_bias, params.presence_penalty) == (2, 2, ((7, -5.0),), 0.5)


# ---------------------------------------------------------------------------------------------------------------
# Admission (429), deadlines (504), budgets and truthful records


SLOW_SPEC = """
name = "t"
[server]
request_timeout_s = {timeout}
[deployments.echo]
engine = "echo"
token_delay_s = {delay}
max_ongoing_requests = 1
max_queued_requests = 0
"""


def _slow(timeout=30, delay=0.2, on_record=None):
    spec = SLOW_SPEC.format(timeout=timeout, delay=delay)
    servers = _servers(spec)
    return _client(servers=servers, spec=spec, on_record=on_record), servers["echo"].engine


def test_a_model_at_capacity_answers_429_with_retry_after_at_once():
    records = []
    client, engine = _slow(on_record=records.append)
    words = " ".join(["w"] * 10)
    first = {}
    holder = threading.Thread(
        target=lambda: first.update(r=_chat(client, messages=[{"role": "user", "content": words}]))
    )
    holder.start()
    while engine.running == 0:  # the first request holds the only slot
        assert holder.is_alive()
        time.sleep(0.01)
    error_response = _chat(client)
    holder.join()
    error = _error(error_response, 429)
    assert error["type"] == "rate_limit_error" and error["code"] == "rate_limit_exceeded"
    assert "echo is at capacity (1 requests running or queued)" in error["message"]
    assert int(error_response.headers["retry-after"]) >= 1
    assert first["r"].status_code == 200
    assert len(engine.history) == 1  # the refused request never reached the model
    assert sorted(r.status_code for r in records) == [200, 429]
    assert _chat(client).status_code == 200  # the slot is free again


def test_past_its_deadline_before_the_first_token_a_request_gets_504_and_the_model_stops():
    client, engine = _slow(timeout=0.3, delay=5)
    error = _error(_chat(client), 504)
    assert error["code"] == "timeout" and "0.3 s limit" in error["message"]
    assert engine.running == 0


def test_past_its_deadline_a_stream_gets_an_error_event_then_done():
    records = []
    client, engine = _slow(timeout=0.5, delay=0.2, on_record=records.append)
    chunks = []
    with client.stream("POST", "/v1/chat/completions", json={
        "model": "echo", "stream": True, "messages": [{"role": "user", "content": " ".join(["w"] * 50)}],
    }) as response:  # fmt: skip
        assert response.status_code == 200
        chunks = [line for line in response.iter_lines() if line]
    assert chunks[-1] == "data: [DONE]"
    assert json.loads(chunks[-2][6:])["error"]["code"] == "timeout"
    assert any('"content":"w"' in c for c in chunks)  # it did stream before the deadline
    assert engine.running == 0
    [record] = records
    assert (record.status_code, record.finish_reason) == (200, "error")


def test_a_huge_request_is_a_400_before_it_reaches_the_model():
    servers = _servers()
    error = _error(_chat(_client(servers=servers), n=128, max_tokens=1000, logprobs=True, top_logprobs=20), 400)
    assert error["param"] == "n" and "16384" in error["message"]
    assert servers["echo"].engine.history == []


def test_liveness_asks_no_model():
    servers = _servers()
    servers["echo"].engine.unhealthy = "the engine core died"
    client = _client(servers=servers, api_key="k")
    assert client.get("/live").json() == {"status": "alive"}  # open without a key, whatever the models do
    assert client.get("/health").status_code == 503


# ---------------------------------------------------------------------------------------------------------------
# Hostile input: every case gets a 4xx in the envelope with its param, never a 500


def _raw(client, content: bytes, content_type: str = "application/json"):
    return client.post("/v1/chat/completions", content=content, headers={"content-type": content_type})


def test_json_nested_past_the_recursion_limit_is_400(client):
    deep = b'{"model": "echo", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert "nested too deeply" in _error(_raw(client, deep), 400)["message"]


def test_an_integer_past_pythons_digit_limit_is_400(client):
    huge = b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], "seed": ' + b"9" * 5000 + b"}"
    assert "not valid JSON" in _error(_raw(client, huge), 400)["message"]


@pytest.mark.parametrize("field, param", [("content", "messages"), ("model", "model")])
def test_a_lone_surrogate_is_400_naming_the_field(field, param):
    records = []
    client = _client(on_record=records.append)
    body = {"model": "echo", "messages": [{"role": "user", "content": "x"}]}
    raw = json.dumps(body).replace('"x"' if field == "content" else '"echo"', '"\\ud800"').encode()
    for stream in (False, True):
        sent = raw.replace(b"}]", b"}], " + (b'"stream": true' if stream else b'"stream": false'), 1)
        error = _error(_raw(client, sent), 400)
        assert error["param"] == param and "not valid Unicode" in error["message"]
    assert [r.status_code for r in records] == [400, 400]


@pytest.mark.parametrize("seed", [2**63, -(2**63) - 1])
def test_a_seed_beyond_int64_is_400(client, seed):
    assert _error(_chat(client, seed=seed), 400)["param"] == "seed"


@pytest.mark.parametrize(
    "raw_value, param",
    [('"stream": "yes"', "stream"), ('"logprobs": 1', "logprobs"), ('"repetition_penalty": Infinity', "repetition_penalty"),
     ('"temperature": NaN', "temperature")],
)  # fmt: skip
def test_no_lenient_booleans_and_only_finite_numbers(client, raw_value, param):
    raw = b'{"model": "echo", "messages": [{"role": "user", "content": "x"}], ' + raw_value.encode() + b"}"
    assert _error(_raw(client, raw), 400)["param"] == param


def test_a_long_model_id_is_400_and_never_echoed_whole():
    records = []
    client = _client(on_record=records.append)
    error = _error(_chat(client, model="m" * 10_000), 400)
    assert error["param"] == "model" and len(error["message"]) < 300
    not_found = _error(_chat(client, model="n" * 200), 404)
    assert len(not_found["message"]) < 200 and "..." in not_found["message"]
    assert len(records) == 2 and all(len(r.model) <= 64 for r in records)


def test_stop_strings_are_capped_in_length(client):
    error = _error(_chat(client, stop=["x" * 1025]), 400)
    assert error["param"] == "stop" and "at most 1024 characters" in error["message"]


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_a_body_that_is_not_declared_json_is_415(client, content_type):
    raw = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "x"}]}).encode()
    error = _error(_raw(client, raw, content_type), 415)
    assert "Content-Type: application/json" in error["message"]


def test_a_body_over_the_limit_is_413_before_it_is_parsed():
    servers = _servers()
    cards = build_plan(parse_spec(SPEC)).cards
    client = TestClient(create_app(servers, cards, max_body_bytes=1000))
    big = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "x" * 2000}]}).encode()
    assert "larger than this server accepts (1000 bytes)" in _error(_raw(client, big), 413)["message"]
    assert servers["echo"].engine.history == []
    assert _chat(client).status_code == 200


def test_with_an_api_key_the_docs_and_the_openapi_document_are_off():
    assert _client().get("/openapi.json").status_code == 200
    keyed = _client(api_key="k")
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert keyed.get(path).status_code == 404


def test_a_host_header_outside_the_allow_list_is_400_in_the_envelope():
    servers = _servers()
    client = TestClient(create_app(servers, build_plan(parse_spec(SPEC)).cards, allowed_hosts=("localhost", "::1")))
    error = _error(client.get("/health", headers={"host": "evil.example:8000"}), 400)
    assert error["code"] == "invalid_host"
    assert _error(_chat(client), 400)["code"] == "invalid_host"  # TestClient's own Host is "testserver"
    for host in ("localhost:8000", "LOCALHOST", "[::1]:8000"):
        assert client.get("/health", headers={"host": host}).status_code == 200


def test_allowed_hosts_default_to_loopback_names_on_a_loopback_bind_only():
    def hosts(server_table: str) -> tuple[str, ...]:
        return build_plan(
            parse_spec(f'name = "t"\n[server]\n{server_table}\n[deployments.e]\nengine = "echo"\n')
        ).allowed_hosts

    assert hosts("") == ("localhost", "127.0.0.1", "::1")
    assert hosts('host = "0.0.0.0"') == ("*",)
    assert hosts('host = "0.0.0.0"\nallowed_hosts = ["llm.example.com"]') == ("llm.example.com",)
    loopback = build_plan(parse_spec('name = "t"\n[deployments.e]\nengine = "echo"\n'))
    assert loopback.with_server(host="0.0.0.0").allowed_hosts == ("*",)  # --host moves the default along
