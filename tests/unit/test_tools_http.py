"""Tools and structured output over HTTP, in-process: the official openai client against the ingress over scripted
echo replicas (`enqueue` scripts the model's text, `history` shows what reached the engine).

The engines' own constrained decoding is tested in tests/engine; here: what a request asks of the engine (the
constraint, the tools for the template, the flattened tool messages) and how the model's text becomes tool calls,
streamed exactly as OpenAI streams them.
"""

from __future__ import annotations

import json

import pytest
from in_process import serve

SPEC = """
name = "t"
[deployments.agent]
engine = "echo"
tool_parser = "hermes"
[deployments.plain]
engine = "echo"
"""
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture
def served():
    app = serve(SPEC)
    return app.client, app.http, app.engines


def script(engine, *replies):
    for reply in replies:
        engine.enqueue(reply)


def sse_chunks(http, **body):
    with http.stream("POST", "/v1/chat/completions", json={"stream": True, **body}) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line[6:]) for line in lines[:-1]]


HERMES_REPLY = ["Let me check.\n", "<tool_", 'call>\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}\n</tool', "_call>"]  # fmt: skip


def test_auto_reads_the_models_own_tool_calls(served):
    client, _, engines = served
    script(engines["agent"], HERMES_REPLY)
    reply = client.chat.completions.create(model="agent", messages=ASK, tools=[WEATHER])
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    [call] = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    [request] = engines["agent"].history
    assert request.tools == (WEATHER,) and request.params.structured is None


def test_streamed_tool_calls_follow_openais_chunks_and_the_sdk_assembles_them(served):
    client, http, engines = served
    script(engines["agent"], HERMES_REPLY, HERMES_REPLY)
    chunks = sse_chunks(http, model="agent", messages=ASK, tools=[WEATHER])
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    content = "".join(d.get("content") or "" for d in deltas)
    assert content == "Let me check." and "<tool" not in content
    calls = [d["tool_calls"][0] for d in deltas if "tool_calls" in d]
    assert calls[0] == {"index": 0, "id": calls[0]["id"], "type": "function",
                        "function": {"name": "get_weather", "arguments": ""}}  # fmt: skip
    assert all(set(c) == {"index", "function"} and set(c["function"]) == {"arguments"} for c in calls[1:])
    assert json.loads("".join(c["function"]["arguments"] for c in calls)) == {"city": "Paris"}
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    with client.chat.completions.stream(model="agent", messages=ASK, tools=[WEATHER]) as stream:
        final = stream.get_final_completion()
    [call] = final.choices[0].message.tool_calls
    assert (call.function.name, json.loads(call.function.arguments)) == ("get_weather", {"city": "Paris"})
    assert final.choices[0].finish_reason == "tool_calls"


def test_two_parallel_calls_get_their_own_index_and_id(served):
    client, _, engines = served
    text = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
            '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')  # fmt: skip
    script(engines["agent"], [text])
    reply = client.chat.completions.create(model="agent", messages=ASK, tools=[WEATHER, TIME])
    calls = reply.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]
    assert len({c.id for c in calls}) == 2 and reply.choices[0].message.content is None


def test_named_tool_choice_constrains_to_the_functions_schema_and_streams_arguments(served):
    client, http, engines = served
    named = {"type": "function", "function": {"name": "get_weather"}}
    pieces = ['{"city": ', '"Par', 'is"}']
    script(engines["plain"], pieces, pieces)
    reply = client.chat.completions.create(model="plain", messages=ASK, tools=[WEATHER, TIME], tool_choice=named)
    [call] = reply.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Paris"}')
    request = engines["plain"].history[0]
    assert json.loads(request.params.structured.json_schema) == WEATHER["function"]["parameters"]
    chunks = sse_chunks(http, model="plain", messages=ASK, tools=[WEATHER, TIME], tool_choice=named)
    calls = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks if "tool_calls" in c["choices"][0]["delta"]]
    assert calls[0]["function"] == {"name": "get_weather", "arguments": ""}
    # Fragments as the model wrote them (pieces that piled up while the client was busy go out together).
    assert "".join(c["function"]["arguments"] for c in calls[1:]) == "".join(pieces) and len(calls) >= 2


def test_required_constrains_to_an_array_of_calls(served):
    client, _, engines = served
    text = '[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "arguments": {"city": "Oslo"}}]'
    script(engines["plain"], [text])
    reply = client.chat.completions.create(
        model="plain", messages=ASK, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=False
    )
    assert [c.function.name for c in reply.choices[0].message.tool_calls] == ["get_time", "get_weather"]
    schema = json.loads(engines["plain"].history[0].params.structured.json_schema)
    assert schema["type"] == "array" and schema["minItems"] == 1 and schema["maxItems"] == 1
    names = [option["properties"]["name"]["const"] for option in schema["items"]["anyOf"]]
    assert names == ["get_weather", "get_time"]


def test_tool_choice_none_leaves_the_text_as_content(served):
    client, _, engines = served
    script(engines["agent"], HERMES_REPLY)
    reply = client.chat.completions.create(model="agent", messages=ASK, tools=[WEATHER], tool_choice="none")
    assert reply.choices[0].message.content == "".join(HERMES_REPLY)
    assert reply.choices[0].message.tool_calls is None and reply.choices[0].finish_reason == "stop"


def test_a_tool_round_trip_reaches_the_template_as_hugging_face_reads_it(served):
    client, _, engines = served
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
        ]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]  # fmt: skip
    script(engines["agent"], ["It is sunny."])
    reply = client.chat.completions.create(model="agent", messages=messages, tools=[WEATHER])
    assert reply.choices[0].message.content == "It is sunny." and reply.choices[0].finish_reason == "stop"
    sent = engines["agent"].history[0].messages
    assert sent[1] == {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]}  # fmt: skip
    assert sent[2] == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": "call_1"}


def test_response_format_json_schema_reaches_the_engine_as_the_constraint(served):
    client, _, engines = served
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    script(engines["plain"], ['{"a": 1}'], ['{"b": 2}'])
    reply = client.chat.completions.create(
        model="plain", messages=ASK,
        response_format={"type": "json_schema", "json_schema": {"name": "thing", "schema": schema, "strict": True}},
    )  # fmt: skip
    assert json.loads(reply.choices[0].message.content) == {"a": 1}
    assert json.loads(engines["plain"].history[0].params.structured.json_schema) == schema
    client.chat.completions.create(model="plain", messages=ASK, response_format={"type": "json_object"})
    assert engines["plain"].history[1].params.structured.json_schema is None


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "not among the tools"),
        ({"tools": [WEATHER, WEATHER]}, "tools", "share a function name"),
        ({"tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}}}]},
         "tools[0].function.parameters", "'multipleOf'"),
        ({"messages": [{"role": "tool", "content": "x"}]}, "messages[0].tool_call_id", "required"),
        ({"messages": [{"role": "assistant", "tool_calls": [
            {"id": "c", "type": "function", "function": {"name": "f", "arguments": "not json"}}]}]},
         "messages[0].tool_calls[0].function.arguments", "JSON object"),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name", "pattern"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},
         "response_format.json_schema.schema", "required"),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}},
         "response_format.json_schema.schema", "not a valid JSON Schema"),
    ],
)  # fmt: skip
def test_tool_and_format_mistakes_are_400s_naming_the_field(served, body, param, words):
    _, http, engines = served
    body = {"model": "agent", "messages": ASK, "tools": [WEATHER], **body}
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert engines["agent"].history == []
