"""/v1/completions, /v1/embeddings and /v1/models/{id} over HTTP, in-process: the official openai client against the
ingress over echo replicas (a raw prompt is echoed word by word) and a fake embedding engine (vectors computed from
the inputs, so a test can tell which vector belongs to which input).

The real engines behind these routes are tested in tests/engine and, through `aana up`, in tests/e2e.
"""

from __future__ import annotations

import asyncio
import base64
import json
from array import array

import numpy
import openai
import pytest
from fastapi.testclient import TestClient
from in_process import serve

from runtime.engines.base import EmbeddingRequest, EmbeddingResult, Engine, EngineError
from runtime.model_server import ModelServer
from runtime.openai.ingress import create_app
from runtime.plan import build_plan
from runtime.spec import parse_spec

pytestmark = pytest.mark.unit

SPEC = """
name = "t"
[deployments.chat]
engine = "echo"
max_tokens_per_request = 64
[deployments.vec]
engine = "sentence_transformers"
model = "/nowhere"
"""


class FakeEmbedder(Engine):
    """Input i's vector is [characters (or ids), its first id or 0, -1]: distinct per input, exact in float32."""

    async def start(self) -> None:
        self.requests: list[EmbeddingRequest] = []

    async def embed(self, request: EmbeddingRequest) -> EmbeddingResult:
        self.requests.append(request)
        if request.dimensions not in (None, 3, 2):
            raise EngineError("invalid_request", "dimensions must be 2 or 3", "dimensions")
        vectors = []
        for item in request.inputs:
            vector = [float(len(item)), float(item[0]) if isinstance(item, tuple) else 0.0, -1.0]
            vectors.append(array("f", vector[: request.dimensions or 3]).tobytes())
        return EmbeddingResult(tuple(vectors), sum(len(i) for i in request.inputs))


@pytest.fixture
def served():
    app = serve(SPEC, lambda deployment: FakeEmbedder if deployment.engine != "echo" else None)
    return app.client, app.http, app.engines


# -- completions -----------------------------------------------------------------------------------------------


def test_a_text_prompt_is_continued_without_a_chat_template(served):
    client, _, engines = served
    completion = client.completions.create(model="chat", prompt="one two three", max_tokens=5, temperature=0)
    [choice] = completion.choices
    assert (completion.object, choice.index, choice.text, choice.finish_reason) == (
        "text_completion", 0, "one two three", "stop")  # fmt: skip
    assert completion.id.startswith("cmpl-")
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (3, 3)
    [request] = engines["chat"].history
    assert (request.prompt, request.messages, request.params.max_tokens) == ("one two three", (), 5)


def test_max_tokens_defaults_to_16_as_in_openai(served):
    client, _, engines = served
    client.completions.create(model="chat", prompt="x")
    assert engines["chat"].history[0].params.max_tokens == 16
    assert engines["chat"].history[0].max_tokens_requested is False


def test_several_prompts_and_n_number_choices_prompt_by_prompt(served):
    client, _, engines = served
    completion = client.completions.create(model="chat", prompt=["a b", "c d e"], n=2, temperature=1, max_tokens=8)
    texts = {c.index: c.text for c in completion.choices}
    assert texts == {0: "a b", 1: "b a", 2: "c d e", 3: "d e c"}
    assert completion.usage.prompt_tokens == 5 and completion.usage.completion_tokens == 10
    assert [r.prompt for r in engines["chat"].history] == ["a b", "c d e"]


def test_token_id_prompts_reach_the_engine_as_ids(served):
    client, _, engines = served
    completion = client.completions.create(model="chat", prompt=[[5, 6], [7]], max_tokens=4)
    assert [c.text for c in completion.choices] == ["t5 t6", "t7"]
    assert [r.prompt for r in engines["chat"].history] == [(5, 6), (7,)]
    client.completions.create(model="chat", prompt=[9, 8], max_tokens=4)
    assert engines["chat"].history[-1].prompt == (9, 8)


def test_streaming_joins_to_the_non_streamed_text_with_the_legacy_chunks_and_usage(served):
    client, http, _ = served
    whole = client.completions.create(model="chat", prompt=["a b c", "d e"], max_tokens=8)
    chunks = list(client.completions.create(model="chat", prompt=["a b c", "d e"], max_tokens=8, stream=True,
                                            stream_options={"include_usage": True}))  # fmt: skip
    texts: dict[int, str] = {}
    for chunk in chunks[:-1]:
        assert chunk.object == "text_completion" and chunk.id == chunks[0].id
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {c.index: c.text for c in whole.choices}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop", "stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump() == whole.usage.model_dump()
    with http.stream("POST", "/v1/completions", json={"model": "chat", "prompt": "x", "stream": True}) as response:
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all('"usage"' not in line for line in lines)  # usage only when asked


def test_echo_puts_the_prompt_before_the_continuation(served):
    client, _, _ = served
    completion = client.completions.create(model="chat", prompt="hi there", echo=True, max_tokens=4)
    assert completion.choices[0].text == "hi therehi there"
    chunks = list(client.completions.create(model="chat", prompt="hi there", echo=True, max_tokens=4, stream=True))
    assert chunks[0].choices[0].text == "hi there"
    assert "".join(c.choices[0].text for c in chunks) == "hi therehi there"


def test_logprobs_take_the_legacy_shape(served):
    client, _, _ = served
    completion = client.completions.create(model="chat", prompt="a bb", logprobs=2, max_tokens=4)
    logprobs = completion.choices[0].logprobs
    assert logprobs.tokens == ["a", " bb"]
    assert logprobs.token_logprobs == [-0.1, -0.2]
    assert logprobs.text_offset == [0, 1]
    assert logprobs.top_logprobs == [{"a": -0.1, "<alt1>": -1.1}, {" bb": -0.2, "<alt1>": -1.2}]
    streamed = list(client.completions.create(model="chat", prompt="a bb", logprobs=2, max_tokens=4, stream=True))
    tokens = [t for c in streamed for ch in c.choices if ch.logprobs for t in ch.logprobs.tokens]
    offsets = [t for c in streamed for ch in c.choices if ch.logprobs for t in ch.logprobs.text_offset]
    assert (tokens, offsets) == (["a", " bb"], [0, 1])


@pytest.mark.parametrize(
    ("body", "param", "words"),
    [
        ({"suffix": "end"}, "suffix", "fill-in-the-middle"),
        ({"best_of": 3}, "best_of", "best_of must equal n"),
        ({"echo": True, "logprobs": 1}, "echo", "echo with logprobs"),
        ({"echo": True, "prompt": [1, 2]}, "echo", "echo needs the prompt as text"),
        ({"prompt": []}, "prompt", "a list of token ids"),
        ({"prompt": [1, "a"]}, "prompt", "a list of lists of token ids"),
        ({"prompt": ["a", "b", "c"], "max_tokens": 30}, "max_tokens", "prompts (3) x max_tokens (30) = 90"),
        ({"logprobs": 21}, "logprobs", "less than or equal to 20"),
        ({"stream_options": {"include_usage": True}}, "stream_options", "only allowed with stream=true"),
        ({"messages": []}, "messages", "messages"),
    ],
)
def test_bad_completions_requests_are_400s_naming_the_field(served, body, param, words):
    _, http, engines = served
    response = http.post("/v1/completions", json={"model": "chat", "prompt": "x"} | body)
    error = response.json()["error"]
    assert (response.status_code, error["param"]) == (400, param), error
    assert words in error["message"]
    assert engines["chat"].history == []


def test_an_embedding_model_refuses_completions_and_chat_naming_the_right_route(served):
    _, http, _ = served
    for path, body in (("/v1/completions", {"prompt": "x"}), ("/v1/chat/completions", {"messages": [
            {"role": "user", "content": "x"}]})):  # fmt: skip
        response = http.post(path, json={"model": "vec"} | body)
        assert response.status_code == 400
        assert "vec is an embedding model: send it to /v1/embeddings" in response.json()["error"]["message"]


# -- embeddings ------------------------------------------------------------------------------------------------


def test_embeddings_as_floats_and_as_base64_are_the_same_vectors(served):
    client, http, engines = served
    # The SDK asks for base64 by default and decodes it with numpy.
    result = client.embeddings.create(model="vec", input=["hello", "hi"])
    assert [d.embedding for d in result.data] == [[5.0, 0.0, -1.0], [2.0, 0.0, -1.0]]
    assert [d.index for d in result.data] == [0, 1] and result.model == "vec"
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (7, 7)
    raw = http.post("/v1/embeddings", json={"model": "vec", "input": "hello", "encoding_format": "float"}).json()
    assert raw["object"] == "list" and raw["data"][0] == {"object": "embedding", "embedding": [5.0, 0.0, -1.0],
                                                          "index": 0}  # fmt: skip
    encoded = http.post("/v1/embeddings", json={"model": "vec", "input": "hello", "encoding_format": "base64"})
    vector = numpy.frombuffer(base64.b64decode(encoded.json()["data"][0]["embedding"]), dtype="<f4")
    assert vector.tolist() == [5.0, 0.0, -1.0]
    assert engines["vec"].requests[0].inputs == ("hello", "hi")


def test_embedding_inputs_as_token_ids_and_dimensions_reach_the_engine(served):
    client, http, engines = served
    result = client.embeddings.create(model="vec", input=[[7, 8, 9], [4]], dimensions=2)
    assert [d.embedding for d in result.data] == [[3.0, 7.0], [1.0, 4.0]]
    assert engines["vec"].requests[-1] == EmbeddingRequest(engines["vec"].requests[-1].request_id, ((7, 8, 9), (4,)), 2)
    client.embeddings.create(model="vec", input=[5, 6])
    assert engines["vec"].requests[-1].inputs == ((5, 6),)
    response = http.post("/v1/embeddings", json={"model": "vec", "input": "x", "dimensions": 7})
    assert (response.status_code, response.json()["error"]["param"]) == (400, "dimensions")


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"model": "chat"}, 400, "model"),
        ({"model": "nope"}, 404, "model"),
        ({"input": []}, 400, "input"),
        ({"input": [[]]}, 400, "input"),
        ({"encoding_format": "int8"}, 400, "encoding_format"),
        ({"dimensions": 0}, 400, "dimensions"),
        ({"extra": 1}, 400, "extra"),
    ],
)
def test_bad_embeddings_requests_name_the_field(served, body, status, param):
    _, http, engines = served
    response = http.post("/v1/embeddings", json={"model": "vec", "input": "x"} | body)
    assert (response.status_code, response.json()["error"]["param"]) == (status, param)
    assert engines["vec"].requests == []


# -- models ----------------------------------------------------------------------------------------------------


def test_each_model_can_be_retrieved_and_an_unknown_one_is_a_404(served):
    client, http, _ = served
    for name in ("chat", "vec"):
        model = client.models.retrieve(name)
        assert (model.id, model.object, model.owned_by) == (name, "model", "aana")
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("org/missing")
    assert caught.value.body["code"] == "model_not_found" and "chat, vec" in caught.value.body["message"]
    assert http.get("/models/chat").json()["id"] == "chat"
    assert json.loads(http.get("/v1/models").text)["data"][1]["id"] == "vec"


# -- found in review: prompts that wait on each other, one gate place per request, bodies at the edge -------------

SLOTS = """
name = "t"
[deployments.chat]
engine = "echo"
token_delay_s = 0.01
max_ongoing_requests = 1
max_queued_requests = 1
"""


@pytest.fixture
def one_slot():
    plan = build_plan(parse_spec(SLOTS))
    server = ModelServer(plan.deployments[0])
    asyncio.run(server.start())
    with TestClient(create_app({"chat": server}, plan.cards)) as http:  # one event loop for every request
        yield http, server


def test_more_prompts_than_replica_slots_and_gate_places_all_complete(one_slot):
    # One slot in the replica and a gate of 2: five prompts must not wait on each other's unread streams, and the
    # request takes one place in the gate however many prompts it holds.
    http, server = one_slot
    body = {"model": "chat", "prompt": [f"p{i} x" for i in range(5)], "max_tokens": 4}
    for stream in (False, True):
        response = http.post("/v1/completions", json=body | {"stream": stream})
        assert response.status_code == 200, response.text
    whole = http.post("/v1/completions", json=body).json()
    assert [c["text"] for c in whole["choices"]] == [f"p{i} x" for i in range(5)]
    assert server.queued == 0 and server.engine.running == 0


def test_a_long_token_id_prompt_is_the_models_to_bound_not_the_list_limit(served):
    _, http, engines = served
    response = http.post("/v1/completions", json={"model": "chat", "prompt": list(range(3000)), "max_tokens": 1})
    assert response.status_code == 200
    assert len(engines["chat"].history[-1].prompt) == 3000


def test_a_body_nested_as_deep_as_json_allows_is_a_400(served):
    _, http, _ = served
    for depth in (985, 990, 995, 5000):
        body = '{"model": "chat", "prompt": "x", "user": ' + "[" * depth + "]" * depth + "}"
        response = http.post("/v1/completions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, (depth, response.text)


def test_an_empty_prompt_is_the_clients_error_not_an_empty_batch_row():
    from runtime.engines.base import GenerationRequest, request_prompt_ids

    class NoBosTokenizer:  # like SmolLM2's: "" tokenizes to nothing
        def __call__(self, text, add_special_tokens):
            return {"input_ids": [ord(c) for c in text]}

        def __len__(self):
            return 256

    assert request_prompt_ids(NoBosTokenizer(), GenerationRequest("r", (), prompt="hi")) == [104, 105]
    for prompt in ("", ()):
        with pytest.raises(EngineError) as caught:
            request_prompt_ids(NoBosTokenizer(), GenerationRequest("r", (), prompt=prompt))
        assert (caught.value.kind, caught.value.param) == ("invalid_request", "prompt")
    with pytest.raises(EngineError, match="outside this model's vocabulary"):
        request_prompt_ids(NoBosTokenizer(), GenerationRequest("r", (), prompt=(1, 300)))
