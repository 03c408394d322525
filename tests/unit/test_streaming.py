"""The SSE chunk sequence and the non-streaming aggregate, from engine items alone (no HTTP, no Ray)."""

import asyncio
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.engines.base import Delta, StreamError, TokenLogprob, TopLogprob
from runtime.openai.errors import APIError
from runtime.openai.protocol import ChunkChoice, DeltaMessage
from runtime.openai.streaming import DONE, ChunkWriter, ResponseIds, collect, stream_events

IDS = ResponseIds(id="chatcmpl-1", created=1700000000, model="m")


async def _items(*items):
    for item in items:
        yield item


def _events(items, include_usage=False):
    async def run():
        return [e async for e in stream_events(_items(*items), ChunkWriter(IDS, include_usage))]

    return asyncio.run(run())


def _decode(events):
    assert all(e.startswith("data: ") and e.endswith("\n\n") for e in events)
    payloads = [e[len("data: ") : -2] for e in events]
    assert payloads[-1] == "[DONE]"
    return [json.loads(p) for p in payloads[:-1]]


def test_stop_sequence_of_chunks():
    chunks = _decode(_events([Delta("Hel", 3, 1), Delta("lo", 3, 2), Delta("", 3, 3, "stop")]))
    assert [c["choices"][0]["delta"] for c in chunks] == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert [c["choices"][0]["finish_reason"] for c in chunks] == [None, None, None, "stop"]
    assert {c["id"] for c in chunks} == {"chatcmpl-1"}
    assert {c["created"] for c in chunks} == {1700000000}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert all("usage" not in c for c in chunks)


def test_length_with_text_in_the_last_delta():
    chunks = _decode(_events([Delta("a", 2, 1), Delta("b", 2, 2, "length")]))
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "a", "b", None]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


def test_include_usage_adds_a_last_chunk_without_choices():
    chunks = _decode(_events([Delta("a", 5, 1), Delta("", 5, 2, "stop")], include_usage=True))
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}


def test_error_mid_stream_is_an_error_event_then_done():
    events = _events([Delta("a", 1, 1), StreamError("internal", "engine died")], include_usage=True)
    assert events[-1] == "data: [DONE]\n\n"
    error = json.loads(events[-2][len("data: ") :])
    assert error == {"error": {"message": "engine died", "type": "internal_server_error", "param": None, "code": None}}
    assert len(events) == 4  # role, "a", error, DONE: no finish chunk, no usage


def test_stream_that_ends_without_finish_reason_is_an_error():
    events = _events([Delta("a", 1, 1)])
    assert "error" in json.loads(events[-2][len("data: ") :])
    assert events[-1] == "data: [DONE]\n\n"


def test_nothing_after_finish_is_sent():
    chunks = _decode(_events([Delta("a", 1, 1, "stop"), Delta("late", 1, 2)]))
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "a", None]


def test_collect_joins_text_and_reports_usage():
    completion = asyncio.run(collect(_items(Delta("Hel", 4, 1), Delta("lo", 4, 2, "length")), IDS))
    body = completion.model_dump()
    assert body["choices"] == [
        {"index": 0, "message": {"role": "assistant", "content": "Hello"}, "logprobs": None, "finish_reason": "length"}
    ]
    assert body["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert body["object"] == "chat.completion" and body["id"] == "chatcmpl-1"


@pytest.mark.parametrize(
    "error, status, code",
    [
        (StreamError("context_length", "too long", "messages"), 400, "context_length_exceeded"),
        (StreamError("invalid_request", "bad"), 400, None),
        (StreamError("unavailable", "down"), 503, None),
        (StreamError("internal", "boom"), 500, None),
    ],
)
def test_collect_turns_stream_errors_into_api_errors(error, status, code):
    with pytest.raises(APIError) as caught:
        asyncio.run(collect(_items(Delta("a", 1, 1), error), IDS))
    assert caught.value.status == status
    assert caught.value.code == code
    assert caught.value.body()["error"]["message"] == error.message


# ---------------------------------------------------------------------------------------------------------------
# Several choices (n) and logprobs


def _lp(token, logprob, *alternatives):
    """A TokenLogprob whose top list is the token itself, then `alternatives` ((token, logprob) pairs)."""
    top = ((token, logprob), *alternatives)
    return TokenLogprob(token, logprob, list(token.encode()), tuple(TopLogprob(t, p, list(t.encode())) for t, p in top))


def _events_n(items, n, include_usage=False, logprobs=False):
    async def run():
        writer = ChunkWriter(IDS, include_usage, logprobs)
        return [e async for e in stream_events(_items(*items), writer, n)]

    return asyncio.run(run())


def _wire(chunk):
    """(index, delta, finish_reason) of a one-choice chunk."""
    (choice,) = chunk["choices"]
    return choice["index"], choice["delta"], choice["finish_reason"]


def test_two_choices_role_chunks_first_then_interleaved_content_then_each_finish_and_summed_usage():
    items = [
        Delta("a", 4, 1, index=0),
        Delta("x", 4, 1, index=1),
        Delta("b", 4, 2, index=0),
        Delta("", 4, 2, "stop", index=0),
        Delta("y", 4, 2, index=1),
        Delta("z", 4, 3, "length", index=1),
    ]
    chunks = _decode(_events_n(items, 2, include_usage=True))
    assert [_wire(c) for c in chunks[:-1]] == [
        (0, {"role": "assistant", "content": ""}, None),
        (1, {"role": "assistant", "content": ""}, None),
        (0, {"content": "a"}, None),
        (1, {"content": "x"}, None),
        (0, {"content": "b"}, None),
        (0, {}, "stop"),
        (1, {"content": "y"}, None),
        (1, {"content": "z"}, None),
        (1, {}, "length"),
    ]
    assert all(c["choices"][0]["logprobs"] is None for c in chunks[:-1])
    assert all(c["usage"] is None for c in chunks[:-1])
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}
    assert {c["id"] for c in chunks} == {"chatcmpl-1"}


def test_a_stream_that_ends_before_every_choice_finished_is_an_error():
    events = _events_n([Delta("a", 1, 1, "stop", index=0), Delta("x", 1, 1, index=1)], 2, include_usage=True)
    assert json.loads(events[-2][len("data: ") :])["error"]["message"].startswith("the model stream ended")
    assert events[-1] == DONE
    assert not any('"usage":{' in e for e in events)


def test_nothing_of_a_finished_choice_is_sent_while_others_go_on():
    items = [Delta("a", 1, 1, "stop", index=0), Delta("late", 1, 2, index=0), Delta("x", 1, 1, "stop", index=1)]
    chunks = _decode(_events_n(items, 2))
    assert [(_wire(c)[0], _wire(c)[1].get("content")) for c in chunks[2:]] == [(0, "a"), (0, None), (1, "x"), (1, None)]


def test_logprobs_ride_on_content_chunks_in_openai_shape():
    items = [
        Delta("Hi", 2, 1, logprobs=(_lp("Hi", -0.25, ("Hey", -1.5)),)),
        Delta("", 2, 2, logprobs=(_lp("\u00e9", float("-inf"), ("e", -2.0)),)),  # text held back, logprobs not
        Delta("\u00e9", 2, 2, "length"),
    ]
    chunks = _decode(_events_n(items, 1, logprobs=True))
    assert [c["choices"][0]["logprobs"] for c in chunks] == [
        None,  # the role chunk
        {"content": [{"token": "Hi", "logprob": -0.25, "bytes": [72, 105], "top_logprobs": [
            {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]},
            {"token": "Hey", "logprob": -1.5, "bytes": [72, 101, 121]},
        ]}]},
        {"content": [{"token": "\u00e9", "logprob": -9999.0, "bytes": [195, 169], "top_logprobs": [
            {"token": "\u00e9", "logprob": -9999.0, "bytes": [195, 169]},
            {"token": "e", "logprob": -2.0, "bytes": [101]},
        ]}]},
        {"content": []},  # text whose tokens' logprobs came before
        None,  # the finish chunk, as OpenAI sends it
    ]  # fmt: skip
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "Hi", "", "\u00e9", None]


def test_collect_orders_choices_by_index_with_their_logprobs_and_sums_usage():
    items = [
        Delta("x", 3, 1, index=1, logprobs=(_lp("x", -0.5),)),
        Delta("a", 3, 1, index=0, logprobs=(_lp("a", -0.1),)),
        Delta("y", 3, 2, "stop", index=1, logprobs=(_lp("y", -0.7),)),
        Delta("", 3, 1, "length", index=0),
    ]
    body = asyncio.run(collect(_items(*items), IDS, n=2, logprobs=True)).model_dump()
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in body["choices"]] == [
        (0, "a", "length"),
        (1, "xy", "stop"),
    ]
    assert [[e["token"] for e in c["logprobs"]["content"]] for c in body["choices"]] == [["a"], ["x", "y"]]
    assert body["choices"][1]["logprobs"]["content"][1] == {
        "token": "y", "logprob": -0.7, "bytes": [121],
        "top_logprobs": [{"token": "y", "logprob": -0.7, "bytes": [121]}],
    }  # fmt: skip
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}


def test_collect_without_logprobs_requested_sends_null_and_waits_for_every_choice():
    body = asyncio.run(collect(_items(Delta("a", 1, 1, "stop", index=0, logprobs=(_lp("a", -0.1),)),
                                      Delta("b", 1, 1, "stop", index=1)), IDS, n=2)).model_dump()  # fmt: skip
    assert [c["logprobs"] for c in body["choices"]] == [None, None]
    with pytest.raises(APIError) as caught:
        asyncio.run(collect(_items(Delta("a", 1, 1, "stop", index=0)), IDS, n=2))
    assert caught.value.status == 500


@given(
    text=st.text(),
    index=st.integers(0, 200),
    model=st.text(min_size=1, max_size=40),
    include_usage=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_the_fast_content_chunk_is_exactly_the_wire_models_chunk(text, index, model, include_usage):
    writer = ChunkWriter(ResponseIds("chatcmpl-x", 1700000000, model), include_usage)
    reference = writer._chunk([ChunkChoice(index=index, delta=DeltaMessage(content=text))])
    assert writer.content(text, index) == reference
