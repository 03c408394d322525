"""GET /metrics: vLLM's metric names and meanings, observed per request at the front, summed over front replicas."""

from __future__ import annotations

import asyncio
import threading
import time

import openai
import pytest
from in_process import serve
from prometheus_client.parser import text_string_to_metric_families

from runtime.engines.base import Delta
from runtime.openai.metering import Meter
from runtime.openai.metrics import ServingMetrics, merge_expositions

pytestmark = pytest.mark.unit

SPEC = """
name = "t"
[deployments.chat]
engine = "echo"
max_ongoing_requests = 1
max_queued_requests = 0
"""
HI = [{"role": "user", "content": "one two three"}]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def served():
    app = serve(SPEC)
    return app.client, app.http, app.servers["chat"].engine


def test_histogram_counts_and_token_totals_equal_the_requests_sent(served):
    client, http, _ = served
    usages = []
    for i in range(5):
        if i % 2:
            chunks = list(client.chat.completions.create(model="chat", messages=HI, stream=True,
                                                         stream_options={"include_usage": True}))  # fmt: skip
            usages.append(chunks[-1].usage)
        else:
            usages.append(client.chat.completions.create(model="chat", messages=HI).usage)
    usages.append(client.completions.create(model="chat", prompt="a b", max_tokens=4).usage)
    text = http.get("/metrics").text
    for histogram in ("vllm:time_to_first_token_seconds", "vllm:e2e_request_latency_seconds",
                      "vllm:request_queue_time_seconds"):  # fmt: skip
        assert value(text, f"{histogram}_count", model_name="chat") == 6, histogram
    assert value(text, "vllm:prompt_tokens_total", model_name="chat") == sum(u.prompt_tokens for u in usages)
    assert value(text, "vllm:generation_tokens_total", model_name="chat") == sum(u.completion_tokens for u in usages)
    # Three tokens per chat reply, two per completion: the gaps between them.
    assert value(text, "vllm:inter_token_latency_seconds_count", model_name="chat") == 5 * 2 + 1
    assert value(text, "aana:requests_total", model_name="chat", status_code="200") == 6
    assert value(text, "vllm:num_requests_running", model_name="chat") == 0
    assert value(text, "vllm:num_requests_waiting", model_name="chat") == 0
    assert 'vllm:e2e_request_latency_seconds_bucket{le="0.3",model_name="chat"}' in text


def test_errors_and_rejections_are_counted_without_a_series_per_unknown_name(served):
    client, http, engine = served
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="made-up-name", messages=HI)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="chat", messages=HI, temperature=5)
    engine.delay = 0.2  # hold the only slot: the next request is turned away with 429
    words = {"model": "chat", "messages": [{"role": "user", "content": " ".join(["w"] * 10)}]}
    holder = threading.Thread(target=lambda: http.post("/v1/chat/completions", json=words))
    holder.start()
    while engine.running == 0:
        assert holder.is_alive()
        time.sleep(0.01)
    assert http.post("/v1/chat/completions", json={"model": "chat", "messages": HI}).status_code == 429
    during = http.get("/metrics").text
    holder.join()
    text = http.get("/metrics").text
    in_flight = ("vllm:num_requests_running", "vllm:num_requests_waiting")
    assert sum(value(during, name, model_name="chat") for name in in_flight) == 1  # waiting, or already running
    assert sum(value(text, name, model_name="chat") for name in in_flight) == 0
    assert value(text, "aana:requests_total", model_name="", status_code="404") == 1
    assert value(text, "aana:requests_total", model_name="", status_code="400") == 1
    assert value(text, "aana:rejected_requests_total", model_name="chat", status_code="429") == 1
    assert "made-up-name" not in text


def test_replicas_expositions_add_up_and_a_stopped_replicas_gauges_drop_out():
    a, b = ServingMetrics(), ServingMetrics()
    for metrics, seconds in ((a, 0.5), (b, 2.0), (b, 3.0)):
        metrics.ttft.labels("m").observe(seconds)
        metrics.prompt_tokens.labels("m").inc(10)
    a.running.labels("m").inc(2)
    b.running.labels("m").inc(3)
    merged = merge_expositions([a.exposition(), b.exposition()])
    assert value(merged, "vllm:time_to_first_token_seconds_count", model_name="m") == 3
    assert value(merged, "vllm:time_to_first_token_seconds_sum", model_name="m") == 5.5
    assert value(merged, "vllm:time_to_first_token_seconds_bucket", le="1.0", model_name="m") == 1
    assert value(merged, "vllm:prompt_tokens_total", model_name="m") == 30
    assert value(merged, "vllm:num_requests_running", model_name="m") == 5
    stale = merge_expositions([a.exposition()], stale=[b.exposition()])
    assert value(stale, "vllm:prompt_tokens_total", model_name="m") == 30  # totals never go backwards
    assert value(stale, "vllm:num_requests_running", model_name="m") == 2
    assert "# TYPE vllm:time_to_first_token_seconds histogram" in merged


def test_a_delta_of_several_tokens_counts_each_gap():
    metrics = ServingMetrics()
    meter = Meter(None, metrics)
    meter.model_id = "m"

    async def run() -> None:
        async def items():
            yield Delta("a", 2, 1)
            yield Delta(" b c d", 2, 4)  # three tokens merged by a lagging consumer
            yield Delta("", 2, 4, "stop")

        async for _ in meter.watch(items()):
            pass

    asyncio.run(run())
    assert value(metrics.exposition(), "vllm:inter_token_latency_seconds_count", model_name="m") == 3
