"""The Responses API over HTTP, in-process: the official openai client (its `responses.create` and its
`responses.stream` helper, which checks the event order as it accumulates) against the ingress over scripted echo
replicas (`enqueue` scripts the model's text, `history` shows the chat request that reached the engine).
"""

from __future__ import annotations

import json

import openai
import pydantic
import pytest
from in_process import serve
from openai.types.responses import Response, ResponseStreamEvent

from runtime.engines.base import EngineError

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
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
CHAT_WEATHER = {"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}
HERMES_REPLY = ["Let me check.\n", "<tool_", 'call>\n{"name": "get_weather", ', '"arguments": {"city": "Paris"}}\n</tool', "_call>"]  # fmt: skip
TEXT_EVENTS = [
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
SDK_EVENT = pydantic.TypeAdapter(ResponseStreamEvent)  # validates (the client itself only constructs)
CALL_EVENTS = [
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
]


@pytest.fixture
def served():
    app = serve(SPEC)
    return app.client, app.http, app.engines


def sse_events(http, path="/v1/responses", **body):
    """The events of a streamed response, checked for framing and shape: `event:` names the data's type, each is
    one of the SDK's event models, sequence numbers count from 0, and there is no `[DONE]`."""
    with http.stream("POST", path, json={"stream": True, **body}) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        frames = [frame for frame in response.read().decode().split("\n\n") if frame]
    events = []
    for frame in frames:
        event_line, data_line = frame.split("\n")
        assert data_line.startswith("data: ") and "[DONE]" not in data_line
        data = json.loads(data_line[6:])
        assert event_line == f"event: {data['type']}"
        SDK_EVENT.validate_python(data)  # every field the SDK's event model requires, of its type
        events.append(data)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events


def shape(events):
    """The event types in order, a run of deltas counted once (the replica may merge deltas)."""
    kinds = [e["type"] for e in events]
    return [k for i, k in enumerate(kinds) if not (k.endswith(".delta") and i and kinds[i - 1] == k)]


def test_a_string_input_gets_the_text_and_the_usage(served):
    client, http, engines = served
    response = client.responses.create(model="plain", input="one two three")
    assert response.output_text == "one two three"
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    [message] = response.output
    assert message.type == "message" and message.id.startswith("msg_") and message.role == "assistant"
    assert message.status == "completed" and message.content[0].annotations == []
    usage = response.usage  # the echo engine counts words, and 2 per message
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (5, 3, 8)
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0
    assert (response.store, response.error, response.incomplete_details, response.tools) == (False, None, None, [])
    assert response.tool_choice == "auto" and response.text.format.type == "text" and response.metadata == {}
    [request] = engines["plain"].history
    assert request.messages == ({"role": "user", "content": "one two three"},)
    raw = http.post("/responses", json={"model": "plain", "input": "hi"})  # also served without /v1
    assert raw.status_code == 200 and raw.headers["x-request-id"] == raw.json()["id"]
    body = Response.model_validate(raw.json()).model_dump(exclude_unset=True)  # validated, not only constructed
    assert body["text"] == {"format": {"type": "text"}, "verbosity": "medium"} and body["truncation"] == "disabled"


def test_instructions_lead_as_a_system_message_and_items_become_messages(served):
    client, _, engines = served
    response = client.responses.create(
        model="plain",
        instructions="Be brief.",
        input=[
            {"role": "user", "content": "first question"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "an answer"}]},
            {"role": "developer", "content": "Mind the rules."},
            {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": "second"}, {"type": "input_text", "text": "question"}]},
        ],
        temperature=0.5,
        metadata={"trace": "42"},
        user="u1",
    )  # fmt: skip
    assert response.output_text == "second question"
    assert response.instructions == "Be brief." and response.metadata == {"trace": "42"} and response.user == "u1"
    [request] = engines["plain"].history
    assert request.messages == (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "an answer"},
        {"role": "system", "content": "Mind the rules."},
        {"role": "user", "content": "second\nquestion"},
    )
    assert request.params.temperature == 0.5 == response.temperature


def test_max_output_tokens_bounds_the_generation_and_a_cut_response_is_incomplete(served):
    client, http, engines = served
    response = client.responses.create(model="plain", input="one two three four", max_output_tokens=2)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "one two" and response.output[0].status == "incomplete"
    assert response.max_output_tokens == 2 and response.usage.output_tokens == 2
    request = engines["plain"].history[0]
    assert request.params.max_tokens == 2 and request.max_tokens_requested
    events = sse_events(http, model="plain", input="one two three four", max_output_tokens=2)
    assert shape(events) == ["response.created", "response.in_progress", *TEXT_EVENTS, "response.incomplete"]
    final = events[-1]["response"]
    assert final["status"] == "incomplete" and final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert events[-2]["item"]["status"] == "incomplete"


def test_the_stream_helper_accumulates_the_final_response(served):
    client, _, _ = served
    with client.responses.stream(model="plain", input="alpha beta gamma delta") as stream:
        events = list(stream)
        final = stream.get_final_response()
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == final.output_text == "alpha beta gamma delta"
    assert final.status == "completed" and final.usage.output_tokens == 4 and final.usage.total_tokens == 10
    assert events[0].type == "response.created" and events[-1].type == "response.completed"


def test_a_raw_stream_follows_openais_event_sequence(served):
    _, http, engines = served
    engines["plain"].enqueue(["Hello", " there", " friend"])
    events = sse_events(http, model="plain", input="hi")
    assert shape(events) == ["response.created", "response.in_progress", *TEXT_EVENTS, "response.completed"]
    created, in_progress = events[0]["response"], events[1]["response"]
    assert created["status"] == in_progress["status"] == "in_progress"
    assert created["output"] == [] and created["usage"] is None and created["id"].startswith("resp_")
    added, part = events[2], events[3]
    item_id = added["item"]["id"]
    assert added["item"] == {"id": item_id, "type": "message", "status": "in_progress", "role": "assistant",
                             "content": []}  # fmt: skip
    assert part["part"] == {"type": "output_text", "text": "", "annotations": []}
    deltas = [e for e in events if e["type"] == "response.output_text.delta"]
    assert all(
        (d["item_id"], d["output_index"], d["content_index"], d["logprobs"]) == (item_id, 0, 0, []) for d in deltas
    )
    assert "".join(d["delta"] for d in deltas) == "Hello there friend"
    text_done, part_done, item_done, completed = events[-4:]
    assert text_done["text"] == "Hello there friend" and part_done["part"]["text"] == "Hello there friend"
    assert item_done["item"]["status"] == "completed" and item_done["item"]["content"] == [part_done["part"]]
    final = completed["response"]
    assert final["id"] == created["id"] and final["status"] == "completed" and final["output"] == [item_done["item"]]
    assert final["usage"]["output_tokens"] == 3 and final["usage"]["total_tokens"] == 3 + 3


def test_text_format_json_schema_reaches_the_engine_as_the_constraint(served):
    _, http, engines = served
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    text_format = {"type": "json_schema", "name": "thing", "schema": schema, "strict": True}
    engines["plain"].enqueue(['{"a": 1}'])
    response = http.post("/v1/responses", json={"model": "plain", "input": "x", "text": {"format": text_format}})
    assert response.status_code == 200, response.text
    assert json.loads(engines["plain"].history[0].params.structured.json_schema) == schema
    body = response.json()
    assert body["text"] == {"format": {**text_format, "description": None}, "verbosity": "medium"}
    assert json.loads(body["output"][0]["content"][0]["text"]) == {"a": 1}
    http.post("/v1/responses", json={"model": "plain", "input": "x", "text": {"format": {"type": "json_object"}}})
    assert engines["plain"].history[1].params.structured.json_schema is None


def test_a_tool_call_becomes_a_function_call_item(served):
    client, _, engines = served
    engines["agent"].enqueue(HERMES_REPLY)
    response = client.responses.create(model="agent", input="Weather in Paris?", tools=[WEATHER])
    message, call = response.output
    assert message.type == "message" and message.content[0].text == "Let me check."
    assert call.type == "function_call" and call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert (call.name, json.loads(call.arguments), call.status) == ("get_weather", {"city": "Paris"}, "completed")
    assert response.status == "completed" and response.output_text == "Let me check."
    assert response.tools[0].name == "get_weather" and response.tool_choice == "auto"
    [request] = engines["agent"].history
    assert request.tools == (CHAT_WEATHER,) and request.params.structured is None


def test_streamed_text_then_a_tool_call_are_two_items(served):
    client, http, engines = served
    engines["agent"].enqueue(HERMES_REPLY)
    events = sse_events(http, model="agent", input="Weather in Paris?", tools=[WEATHER])
    assert shape(events) == ["response.created", "response.in_progress", *TEXT_EVENTS, *CALL_EVENTS,
                             "response.completed"]  # fmt: skip
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert text == "Let me check." and "<tool" not in text
    added = [e for e in events if e["type"] == "response.output_item.added"][1]
    call = added["item"]
    assert added["output_index"] == 1 and call["type"] == "function_call" and call["arguments"] == ""
    assert (call["name"], call["status"]) == ("get_weather", "in_progress") and call["call_id"].startswith("call_")
    arguments = "".join(e["delta"] for e in events if e["type"] == "response.function_call_arguments.delta")
    done = next(e for e in events if e["type"] == "response.function_call_arguments.done")
    assert json.loads(arguments) == {"city": "Paris"} and done["arguments"] == arguments
    assert done["item_id"] == call["id"] and done["output_index"] == 1
    final = events[-1]["response"]["output"]
    assert [item["type"] for item in final] == ["message", "function_call"] and final[1]["arguments"] == arguments
    engines["agent"].enqueue(HERMES_REPLY)
    with client.responses.stream(model="agent", input="Weather in Paris?", tools=[WEATHER]) as stream:
        response = stream.get_final_response()
    call = response.output[1]
    assert (call.name, json.loads(call.arguments)) == ("get_weather", {"city": "Paris"})


def test_a_named_tool_choice_constrains_to_the_functions_schema(served):
    client, http, engines = served
    pieces = ['{"city": ', '"Par', 'is"}']
    engines["plain"].enqueue(pieces)
    named = {"type": "function", "name": "get_weather"}
    response = client.responses.create(model="plain", input="Paris?", tools=[WEATHER], tool_choice=named)
    [call] = response.output
    assert (call.type, call.name, call.arguments) == ("function_call", "get_weather", '{"city": "Paris"}')
    assert response.tool_choice.name == "get_weather"
    request = engines["plain"].history[0]
    assert json.loads(request.params.structured.json_schema) == WEATHER["parameters"]
    engines["plain"].enqueue(pieces)
    events = sse_events(http, model="plain", input="Paris?", tools=[WEATHER], tool_choice=named)
    assert shape(events) == ["response.created", "response.in_progress", *CALL_EVENTS, "response.completed"]
    assert events[-1]["response"]["output"][0]["arguments"] == '{"city": "Paris"}'


def test_a_follow_up_sends_the_calls_and_their_outputs_back(served):
    client, _, engines = served
    engines["agent"].enqueue(HERMES_REPLY)
    ask = [{"role": "user", "content": "Weather in Paris?"}]
    first = client.responses.create(model="agent", input=ask, tools=[WEATHER])
    call = first.output[1]
    outcome = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}
    engines["agent"].enqueue(["It is sunny."])
    second = client.responses.create(model="agent", input=[*ask, *first.output, outcome], tools=[WEATHER])
    assert second.output_text == "It is sunny."
    sent = engines["agent"].history[1].messages
    assert sent[1] == {"role": "assistant", "content": "Let me check.", "tool_calls": [
        {"id": call.call_id, "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    ]}  # fmt: skip
    assert sent[2] == {"role": "tool", "content": "sunny, 21 C", "tool_call_id": call.call_id}
    calls = [
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city": "Oslo"}'},
        {"type": "function_call", "call_id": "c2", "name": "get_weather", "arguments": '{"city": "Rome"}'},
        {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "rain"}]},
        {"type": "function_call_output", "call_id": "c2", "output": "sun"},
    ]
    client.responses.create(model="agent", input=[*ask, *calls], tools=[WEATHER])
    sent = engines["agent"].history[2].messages
    assert sent[1]["content"] == "" and [c["id"] for c in sent[1]["tool_calls"]] == ["c1", "c2"]
    assert sent[2:] == ({"role": "tool", "content": "rain", "tool_call_id": "c1"},
                        {"role": "tool", "content": "sun", "tool_call_id": "c2"})  # fmt: skip


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"store": True}, "store", "send store=false"),
        ({"previous_response_id": "resp_1"}, "previous_response_id", "whole conversation"),
        ({"reasoning": {"effort": "high"}}, "reasoning", "not supported"),
        ({"truncation": "auto"}, "truncation", 'truncation="disabled"'),
        ({"include": ["message.output_text.logprobs"]}, "include", "include"),
        ({"background": True}, "background", "background=false"),
        ({"frobnicate": 1}, "frobnicate", "Unrecognized request argument"),
        ({"input": []}, "input", "at least one item"),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type", "function_call_output"),
        ({"input": [{"role": "user", "content": "x"}, {"type": "function_call", "name": "f", "arguments": "{}"}]},
         "input[1].call_id", "Missing required parameter"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]},
         "input[0].arguments", "JSON object"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
         "input[0].content", "input_image"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "'function'"),
        ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema", "required"),
        ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "objekt"}}}},
         "text.format.schema", "not a valid JSON Schema"),
        ({"tools": [WEATHER], "tool_choice": "required", "model": "plain", "input": "x"} | {"tools": [
            {**WEATHER, "parameters": {"type": "object", "properties": {"n": {"type": "integer", "multipleOf": 3}}}}]},
         "tools[0].parameters", "'multipleOf'"),
        ({"max_output_tokens": 10**9}, "max_output_tokens", "lower max_output_tokens"),
        ({"stream_options": {"include_obfuscation": False}}, "stream_options", "stream=true"),
    ],
)  # fmt: skip
def test_what_cannot_be_served_is_a_400_naming_the_field(served, body, param, words):
    _, http, engines = served
    response = http.post("/v1/responses", json={"model": "plain", "input": "hi", **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and words in error["message"], error
    assert error["type"] == "invalid_request_error"
    assert engines["plain"].history == []


def test_the_sdk_sees_a_400_for_store_and_a_404_for_an_unknown_model(served):
    client, _, _ = served
    with pytest.raises(openai.BadRequestError, match="stored responses are not kept"):
        client.responses.create(model="plain", input="hi", store=True)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.responses.create(model="nope", input="hi")
    assert client.responses.create(model="plain", input="hi", store=False).store is False


def test_an_error_before_the_first_token_is_a_real_status(served):
    _, http, engines = served
    engines["plain"].enqueue([EngineError("unavailable", "replica died")])
    response = http.post("/v1/responses", json={"model": "plain", "input": "hi", "stream": True})
    assert response.status_code == 503 and response.headers["content-type"] == "application/json"
    assert response.json()["error"]["message"] == "replica died"
    engines["plain"].enqueue([EngineError("unavailable", "replica died")])
    assert http.post("/v1/responses", json={"model": "plain", "input": "hi"}).status_code == 503
    assert engines["plain"].running == 0


def test_an_error_mid_stream_is_a_failed_response(served):
    _, http, engines = served
    engines["plain"].enqueue(["partial", EngineError("internal", "boom")])
    events = sse_events(http, model="plain", input="hi")
    assert shape(events) == ["response.created", "response.in_progress", "response.output_item.added",
                             "response.content_part.added", "response.output_text.delta", "response.failed"]  # fmt: skip
    failed = events[-1]["response"]
    assert failed["status"] == "failed" and failed["error"] == {"code": "server_error", "message": "boom"}
    assert failed["output"][0]["status"] == "incomplete" and failed["output"][0]["content"][0]["text"] == "partial"
    assert engines["plain"].running == 0
    engines["plain"].enqueue(["partial", EngineError("internal", "boom")])
    response = http.post("/v1/responses", json={"model": "plain", "input": "hi"})
    assert response.status_code == 500 and response.json()["error"]["message"] == "boom"
