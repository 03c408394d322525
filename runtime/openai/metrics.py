"""Prometheus metrics of the serving path, under vLLM's names and meanings, so vLLM's Grafana dashboards work.

Every replica that answers the app's HTTP keeps its own `ServingMetrics` (prometheus-client, not hand-formatted
text) and observes each request through its `Meter`: time to first token, end-to-end latency, the time between
tokens, the time a request waited in the model replica before generating, requests running and waiting, prompt and
generation tokens, all labelled `model_name`; and aana's own requests by status code and rejected requests (429,
503) for every engine. `GET /metrics` answers for the whole app: `merge_expositions` sums the expositions of every
front replica (each publishes its own, see `runtime.app`), so a scrape that reaches any replica counts every
request once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

# `_created` series are per-process timestamps: summed over replicas they mean nothing.
disable_created_metrics()

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# vLLM's buckets (vllm/v1/metrics/loggers.py), so a dashboard's histogram_quantile reads the same resolution.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0, 160.0, 640.0, 2560.0)  # fmt: skip
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
               80.0)  # fmt: skip
LATENCY_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)  # fmt: skip
_MODEL = ("model_name",)


class ServingMetrics:
    """One front replica's metrics, in a registry of its own (several apps may share a process in tests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to first token in seconds.",
                              _MODEL, buckets=TTFT_BUCKETS, registry=r)  # fmt: skip
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "Histogram of e2e request latency in seconds.",
                             _MODEL, buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.",
                             _MODEL, buckets=ITL_BUCKETS, registry=r)  # fmt: skip
        self.queue = Histogram("vllm:request_queue_time_seconds",
                               "Histogram of time spent waiting in the model replica before generating, in seconds.",
                               _MODEL, buckets=LATENCY_BUCKETS, registry=r)  # fmt: skip
        self.running = Gauge("vllm:num_requests_running", "Number of requests generating now.", _MODEL, registry=r)
        self.waiting = Gauge("vllm:num_requests_waiting", "Number of requests waiting for their first token.",
                             _MODEL, registry=r)  # fmt: skip
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens processed.", _MODEL, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Number of generation tokens processed.", _MODEL,
                                         registry=r)  # fmt: skip
        self.requests = Counter("aana:requests", "Requests answered, by model and HTTP status code.",
                                ("model_name", "status_code"), registry=r)  # fmt: skip
        self.rejected = Counter("aana:rejected_requests", "Requests turned away before reaching a model (429: the "
                                "model was at capacity, 503: draining).", ("model_name", "status_code"), registry=r)  # fmt: skip

    def exposition(self) -> str:
        return generate_latest(self.registry).decode("utf-8")


class _Merged:
    """A collector that yields already-merged metric families (for `generate_latest`)."""

    def __init__(self, families: list[Metric]):
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def merge_expositions(texts: Sequence[str], stale: Sequence[str] = ()) -> str:
    """The sum of several replicas' expositions: same metric and labels, values added. `stale` expositions (of
    replicas that stopped reporting) keep their counters and histograms, so totals never go backwards, but not their
    gauges, which said what was running then."""
    families: dict[str, Metric] = {}
    values: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
    for text, is_stale in [(t, False) for t in texts] + [(t, True) for t in stale]:
        for family in text_string_to_metric_families(text):
            if is_stale and family.type == "gauge":
                continue
            families.setdefault(family.name, Metric(family.name, family.documentation, family.type))
            for sample in family.samples:
                key = (family.name, sample.name, tuple(sorted(sample.labels.items())))
                values[key] = values.get(key, 0.0) + sample.value
    for (family, name, labels), value in values.items():
        families[family].add_sample(name, dict(labels), value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))
    return generate_latest(registry).decode("utf-8")
