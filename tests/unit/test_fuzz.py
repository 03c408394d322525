"""Fuzzing the HTTP edge: generated requests against the real ingress app over in-process echo replicas.

Hypothesis builds chat requests from the request schema's shape with wrong types, odd text and unknown fields
mixed in, whole random bodies, and byte-level mutations of a valid body. Whatever arrives, the server must answer
with a status below 500, an OpenAI error envelope on every 4xx, a stream that ends with `data: [DONE]`, and go on
serving. The examples are derandomized so CI runs the same requests every time (over 2,000 of them).
"""

from __future__ import annotations

import asyncio
import json

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runtime.model_server import ModelServer
from runtime.openai.ingress import create_app
from runtime.plan import build_plan
from runtime.spec import parse_spec

SPEC = """
name = "fuzz"
[deployments.echo]
engine = "echo"
max_model_len = 256
[deployments.echo.sampling]
max_tokens = 8
"""
PLAN = build_plan(parse_spec(SPEC))
SERVERS = {d.model_id: ModelServer(d) for d in PLAN.deployments}
for _server in SERVERS.values():
    asyncio.run(_server.start())
CLIENT = TestClient(create_app(SERVERS, PLAN.cards, max_body_bytes=64 * 1024))
SEEN = {"requests": 0}

FUZZ = settings(
    max_examples=700, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow], database=None
)

# Text a client may send that is not what it seems: lone surrogates, NUL, bidi controls, a very long word.
odd_text = st.sampled_from(["\ud800", "x\udc00y", "\x00", "\u202e", "w" * 5000, "\U0001f600" * 50])
json_scalars = (
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40) | odd_text | st.integers(2**63)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
contents = st.text(max_size=60) | st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url", "x"]), "text": st.text(max_size=20)}),
    max_size=3,
) | json_values  # fmt: skip
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "wizard"]), "content": contents}
    )
    | json_values,
    max_size=4,
)
FIELDS = {
    "temperature": st.floats() | json_values,
    "top_p": st.floats() | json_values,
    "top_k": st.integers() | json_values,
    "min_p": st.floats(),
    "max_tokens": st.integers() | json_values,
    "max_completion_tokens": st.integers(),
    "n": st.integers(min_value=-2, max_value=200),
    "stop": st.text(max_size=10) | st.lists(st.text(max_size=5), max_size=6) | json_values,
    "seed": st.integers() | json_values,
    "stream": st.booleans() | json_values,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | json_values}) | json_values,
    "logprobs": st.booleans() | json_values,
    "top_logprobs": st.integers(min_value=-5, max_value=30),
    "presence_penalty": st.floats(),
    "frequency_penalty": st.floats(),
    "repetition_penalty": st.floats(),
    "response_format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])}) | json_values,
    "tools": json_values,
    "user": json_values,
    "unknown_field": json_values,
}
requests = st.fixed_dictionaries(
    {"model": st.sampled_from(["echo", "nope"]) | st.text(max_size=30) | json_values, "messages": messages},
    optional={name: strategy for name, strategy in FIELDS.items()},
)
# Requests that pass the shape checks and reach the model: the deeper paths (generation, echoing text back).
plausible = st.fixed_dictionaries(
    {
        "model": st.just("echo"),
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=40) | odd_text}
            ),
            min_size=1,
            max_size=3,
        ),
    },
    optional={
        "stream": st.booleans(),
        "n": st.integers(1, 4),
        "max_tokens": st.integers(1, 300),
        "temperature": st.floats(0, 2),
        "stop": st.lists(st.text(max_size=4) | odd_text, max_size=4),
        "seed": st.integers(-(2**63), 2**63 - 1),
        "logprobs": st.booleans(),
        "top_logprobs": st.integers(0, 20),
        "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    },
)
VALID = json.dumps({"model": "echo", "messages": [{"role": "user", "content": "a b c"}], "stream": True}).encode()


def _check(response) -> None:
    SEEN["requests"] += 1
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"message", "type", "param", "code"} <= set(body["error"])
    elif response.headers["content-type"].startswith("text/event-stream"):
        assert response.text.rstrip().endswith("data: [DONE]"), response.text[-200:]
    else:
        assert response.json()["object"] == "chat.completion"


def _post(content: bytes):
    return CLIENT.post("/v1/chat/completions", content=content, headers={"content-type": "application/json"})


@FUZZ
@given(requests)
def test_generated_requests_never_get_a_5xx(body):
    text = json.dumps(body, allow_nan=True)  # NaN and Infinity too (JSON parsers accept them); \\ud800 escaped
    _check(_post(text.encode("utf-8", "surrogatepass")))


@FUZZ
@given(plausible)
def test_plausible_requests_never_get_a_5xx(body):
    _check(_post(json.dumps(body).encode()))


@FUZZ
@given(st.binary(max_size=300))
def test_random_bodies_never_get_a_5xx(raw):
    _check(_post(raw))


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(VALID)), st.integers(0, 255), st.sampled_from("ird")), max_size=6))
def test_mutated_bodies_never_get_a_5xx(edits):
    raw = bytearray(VALID)
    for position, byte, kind in edits:
        position = min(position, len(raw))
        if kind == "i":
            raw.insert(position, byte)
        elif kind == "r" and position < len(raw):
            raw[position] = byte
        elif kind == "d" and position < len(raw):
            del raw[position]
    _check(_post(bytes(raw)))


def test_the_server_still_serves_after_the_fuzzing_and_saw_enough_of_it():
    # Runs after the fuzz tests above (file order): over 2,000 requests, and the model answers as before.
    assert SEEN["requests"] >= 2000, SEEN
    response = CLIENT.post(
        "/v1/chat/completions", json={"model": "echo", "messages": [{"role": "user", "content": "x"}]}
    )
    assert response.json()["choices"][0]["message"]["content"] == "x"
    assert all(server.engine.running == 0 and server.queued == 0 for server in SERVERS.values())
