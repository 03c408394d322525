"""GET /metrics of a real `aana up` with two ingress replicas in front of two models: each replica observes the
requests it answered, and a scrape that reaches either one counts every request once (the replicas publish their
metrics through Ray's KV store, `runtime.app.DrainWatch`)."""

from __future__ import annotations

import time

import httpx
import openai
import pytest
from e2e.server import serving
from prometheus_client.parser import text_string_to_metric_families

pytestmark = pytest.mark.e2e

SPEC = """
name = "metrics"
[server]
ingress_replicas = 2
[deployments.a]
engine = "echo"
num_cpus = 0.2
[deployments.b]
engine = "echo"
num_cpus = 0.2
"""


def _count(text: str, name: str, model: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels.get("model_name") == model:
                return sample.value
    return 0.0


def test_histogram_counts_equal_the_requests_per_model_across_ingress_replicas(tmp_path):
    spec = tmp_path / "metrics.toml"
    spec.write_text(SPEC)
    sent = {"a": 7, "b": 4}
    with serving(spec, tmp_path) as server:
        client = openai.OpenAI(api_key="x", base_url=f"{server.base_url}/v1", max_retries=0, timeout=60)
        tokens = {"a": 0, "b": 0}
        for model, n in sent.items():
            for i in range(n):
                reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": f"w {i}"}])
                tokens[model] += reply.usage.completion_tokens
        deadline = time.monotonic() + 30  # each replica publishes its own numbers every second
        while True:
            scrape = httpx.get(f"{server.base_url}/metrics", timeout=30)
            assert scrape.status_code == 200 and scrape.headers["content-type"].startswith("text/plain")
            counts = {m: _count(scrape.text, "vllm:e2e_request_latency_seconds_count", m) for m in sent}
            if counts == sent or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert counts == sent, scrape.text
    for model, n in sent.items():
        assert _count(scrape.text, "vllm:time_to_first_token_seconds_count", model) == n
        assert _count(scrape.text, "vllm:generation_tokens_total", model) == tokens[model]
        assert _count(scrape.text, "aana:requests_total", model) == n
