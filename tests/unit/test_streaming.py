"""The SSE chunk sequence and the non-streaming aggregate, from engine items alone (no HTTP, no Ray)."""

import asyncio
import json

import pytest

from runtime.engines.base import Delta, StreamError
from runtime.openai.errors import APIError
from runtime.openai.streaming import ChunkWriter, ResponseIds, collect, stream_events

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
