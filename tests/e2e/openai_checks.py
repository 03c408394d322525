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


# -- the rest of the OpenAI surface (completions, responses, models, embeddings) --------------------------------

CAPITAL = "What is the capital of France?"
# What the bundled hermes template renders for that one user message (no tools, no system message): the same
# prompt as text, so a raw completion of it is the chat answer.
CAPITAL_PROMPT = f"<|im_start|>user\n{CAPITAL}<|im_end|>\n<|im_start|>assistant\n"


def check_completions(client, model: str) -> None:
    chat = client.chat.completions.create(model=model, messages=[{"role": "user", "content": CAPITAL}],
                                          max_tokens=24, temperature=0)  # fmt: skip
    raw = client.completions.create(model=model, prompt=CAPITAL_PROMPT, max_tokens=24, temperature=0)
    assert raw.choices[0].text == chat.choices[0].message.content and "Paris" in raw.choices[0].text
    assert raw.usage.prompt_tokens == chat.usage.prompt_tokens
    streamed = client.completions.create(model=model, prompt=CAPITAL_PROMPT, max_tokens=24, temperature=0, stream=True,
                                         stream_options={"include_usage": True})  # fmt: skip
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == raw.choices[0].text
    assert chunks[-1].usage.completion_tokens == raw.usage.completion_tokens
    echoed = client.completions.create(model=model, prompt=CAPITAL_PROMPT, max_tokens=24, temperature=0, echo=True)
    assert echoed.choices[0].text == CAPITAL_PROMPT + raw.choices[0].text
    scored = client.completions.create(model=model, prompt="The capital of France is", max_tokens=4, temperature=0,
                                       logprobs=2)  # fmt: skip
    logprobs = scored.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == scored.usage.completion_tokens == 4
    assert "".join(logprobs.tokens) == scored.choices[0].text
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:i]) for i in range(4)]
    assert all(
        token in top and 2 <= len(top) <= 3 for token, top in zip(logprobs.tokens, logprobs.top_logprobs, strict=True)
    )
    ids = client.completions.create(model=model, prompt=[[504, 3575, 282], [504]], max_tokens=3, temperature=0)
    assert [c.index for c in ids.choices] == [0, 1] and ids.usage.prompt_tokens == 4


def check_responses(client, model: str) -> None:
    response = client.responses.create(model=model, input=CAPITAL, max_output_tokens=40, temperature=0)
    assert "Paris" in response.output_text and response.status == "completed"
    with client.responses.stream(model=model, input=[{"role": "user", "content": CAPITAL}], max_output_tokens=40,
                                 temperature=0) as stream:  # fmt: skip
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == response.output_text
    assert (
        final.usage.output_tokens > 0
        and final.usage.total_tokens == final.usage.input_tokens + final.usage.output_tokens
    )


def check_models(client, ids: list[str]) -> None:
    import openai

    assert [m.id for m in client.models.list()] == ids
    for model_id in ids:
        assert client.models.retrieve(model_id).id == model_id
    try:
        client.models.retrieve("no-such-model")
    except openai.NotFoundError as exc:
        assert exc.body["code"] == "model_not_found"
    else:
        raise AssertionError("an unknown model id was found")


PARAPHRASES = ("A man is playing a guitar.", "Someone plays the guitar.")
UNRELATED = "The stock market fell sharply today."


def check_embeddings(client, model: str) -> None:
    import numpy

    result = client.embeddings.create(model=model, input=[*PARAPHRASES, UNRELATED])  # the SDK asks for base64
    vectors = numpy.array([d.embedding for d in result.data])
    assert vectors.shape == (3, 384)
    assert numpy.allclose(numpy.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    similar, unrelated = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > unrelated + 0.3, (similar, unrelated)
    floats = client.embeddings.create(model=model, input=list(PARAPHRASES), encoding_format="float")
    assert numpy.array_equal(numpy.array([d.embedding for d in floats.data], dtype="<f4"), vectors[:2].astype("<f4"))
    # Each text is [CLS] + its word pieces + [SEP]: 9 + 7 + 9 here.
    assert result.usage.prompt_tokens == result.usage.total_tokens > 3 * 2


def check_langchain(base_url: str, chat_model: str, embedding_model: str) -> None:
    """langchain-openai unchanged, but for the setting every non-OpenAI server needs for embeddings: without it
    OpenAIEmbeddings tokenizes with tiktoken (downloaded on first use) and sends OpenAI's token ids."""
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    llm = ChatOpenAI(model=chat_model, base_url=base_url, api_key="x", temperature=0, max_tokens=40, max_retries=0)
    assert "Paris" in llm.invoke(CAPITAL).content
    assert "Paris" in "".join(chunk.content for chunk in llm.stream(CAPITAL))
    embeddings = OpenAIEmbeddings(model=embedding_model, base_url=base_url, api_key="x", max_retries=0,
                                  check_embedding_ctx_length=False)  # fmt: skip
    documents = embeddings.embed_documents(list(PARAPHRASES))
    query = embeddings.embed_query(PARAPHRASES[0])
    assert len(documents) == 2 and len(query) == 384
    assert abs(sum(a * b for a, b in zip(query, documents[0], strict=True)) - 1.0) < 1e-4
