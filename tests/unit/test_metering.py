"""runtime.openai.metering.Meter: what one completion is recorded as, however it ended."""

from __future__ import annotations

import asyncio

from runtime.engines.base import Delta, StreamError
from runtime.openai.metering import CLIENT_CLOSED, Meter


def _metered(items, status, choices=1):
    records = []
    meter = Meter(records.append)
    meter.request_id, meter.model, meter.choices = "chatcmpl-1", "m", choices

    async def drain():
        async for _ in meter.watch(_aiter(items)):
            pass

    asyncio.run(drain())
    meter.finish(status)
    return records[0]


async def _aiter(items):
    for item in items:
        yield item


def test_a_finished_answer_keeps_its_status_and_finish_reason():
    record = _metered([Delta("a", 3, 1), Delta("", 3, 1, "length")], 200)
    assert (record.status_code, record.finish_reason, record.completion_tokens) == (200, "length", 1)


def test_a_stream_the_client_left_is_499_abort_not_an_error():
    record = _metered([Delta("a", 3, 1)], 200)
    assert (record.status_code, record.finish_reason, record.prompt_tokens) == (CLIENT_CLOSED, "abort", 3)
    two_choices_one_done = _metered([Delta("a", 3, 1, "stop")], 200, choices=2)
    assert two_choices_one_done.status_code == CLIENT_CLOSED


def test_a_failure_mid_stream_stays_an_error():
    record = _metered([Delta("a", 3, 1), StreamError("timeout", "too slow")], 200)
    assert (record.status_code, record.finish_reason) == (200, "error")


def test_a_request_refused_before_the_model_keeps_its_status_and_gets_an_id():
    record = _metered([], 429)
    assert (record.status_code, record.finish_reason) == (429, None)
    assert _metered([], CLIENT_CLOSED).finish_reason == "abort"
