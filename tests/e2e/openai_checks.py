"""Acceptance checks of tools, structured output, choices and logprobs with the official openai client, shared by
the e2e tests of both engines on SmolLM2 (each check is one function, so a failure names the feature)."""

from __future__ import annotations

import json

import jsonschema

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 3},
        "color": {"enum": ["red", "green", "blue"]},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "hobbies", "color", "address"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 40}, "unit": {"enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
ASK_PERSON = [{"role": "user", "content": "Describe a person called Ann who lives in Paris, as JSON."}]
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def check_json_schema(client, model: str) -> None:
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    reply = client.chat.completions.create(model=model, messages=ASK_PERSON, response_format=response_format,
                                           max_tokens=200, temperature=0)  # fmt: skip
    assert reply.choices[0].finish_reason == "stop", reply
    jsonschema.validate(json.loads(reply.choices[0].message.content), PERSON)
    stream = client.chat.completions.create(model=model, messages=ASK_PERSON, response_format=response_format,
                                            max_tokens=200, temperature=0, stream=True)  # fmt: skip
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == reply.choices[0].message.content


def check_json_object(client, model: str) -> None:
    reply = client.chat.completions.create(model=model, messages=ASK_PERSON, response_format={"type": "json_object"},
                                           max_tokens=300, temperature=0)  # fmt: skip
    if reply.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(reply.choices[0].message.content), dict)
    else:  # cut at max_tokens: still the start of an object
        assert reply.choices[0].message.content.startswith("{")


def check_named_tool_round_trip(client, model: str) -> None:
    named = {"type": "function", "function": {"name": "get_weather"}}
    reply = client.chat.completions.create(model=model, messages=ASK_WEATHER, tools=[WEATHER], tool_choice=named,
                                           max_tokens=100, temperature=0)  # fmt: skip
    [call] = reply.choices[0].message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    with client.chat.completions.stream(model=model, messages=ASK_WEATHER, tools=[WEATHER], tool_choice=named,
                                        max_tokens=100, temperature=0) as stream:  # fmt: skip
        [streamed] = stream.get_final_completion().choices[0].message.tool_calls
    assert (streamed.function.name, streamed.function.arguments) == (call.function.name, call.function.arguments)
    history = [
        *ASK_WEATHER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": call.function.arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})},
    ]
    final = client.chat.completions.create(model=model, messages=history, tools=[WEATHER], max_tokens=40,
                                           temperature=0, tool_choice="none")  # fmt: skip
    assert final.choices[0].message.content and final.choices[0].message.tool_calls is None


def check_choices_and_logprobs(client, model: str) -> None:
    hi = [{"role": "user", "content": "Say something."}]
    reply = client.chat.completions.create(model=model, messages=hi, n=3, seed=11, temperature=1.0, max_tokens=8)
    assert [c.index for c in reply.choices] == [0, 1, 2] and all(c.message.content for c in reply.choices)
    reply = client.chat.completions.create(model=model, messages=hi, logprobs=True, top_logprobs=3, max_tokens=5,
                                           temperature=0)  # fmt: skip
    entries = reply.choices[0].logprobs.content
    assert len(entries) == reply.usage.completion_tokens
    assert all(len(e.top_logprobs) == 3 and e.logprob <= 0 and isinstance(e.bytes, list) for e in entries)
