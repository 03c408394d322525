"""What one chat completion cost and how it ended, measured at the ingress, for whoever keeps the records.

A `Meter` watches the engine items of one request on their way to the client: the first text (time to first token),
each choice's last delta (finish reasons; token counts, summed over the choices as the usage is) and in-band errors.
The ingress hands the finished `runtime.records.CompletionRecord` to an optional callback; it never waits on it, so
storage can never slow or fail a request.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime, timezone

from prometheus_client import Gauge

from runtime.engines.base import Delta, StreamError
from runtime.openai.metrics import ServingMetrics
from runtime.records import CLIENT_CLOSED, CompletionRecord

logger = logging.getLogger("aana.ingress")

OnRecord = Callable[[CompletionRecord], None]
MODEL_LABEL_CHARS = 64


def model_label(model: str) -> str:
    """The model name a client sent, as it may be recorded and echoed: bounded, printable text."""
    text = model.encode("utf-8", "backslashreplace").decode("utf-8")  # lone surrogates become visible escapes
    text = "".join(c if c.isprintable() else "?" for c in text)
    return text if len(text) <= MODEL_LABEL_CHARS else text[: MODEL_LABEL_CHARS - 3] + "..."


class Meter:
    def __init__(self, on_record: OnRecord | None, metrics: ServingMetrics | None = None):
        self.on_record = on_record
        self.metrics = metrics
        self.model_id: str | None = None  # the served model it reached (the metrics' label), once known
        self.key_id: str | None = None  # the API key it came with (None: the spec's api_key, or no auth)
        self._phase: Gauge | None = None  # the gauge counting this request now (waiting, then running)
        self._last_token_at: float | None = None
        self.started = time.perf_counter()
        self.created_at = datetime.now(timezone.utc)
        self.request_id = ""
        self.model = ""
        self.stream = False
        self.choices = 1  # the request's n, once known
        self.ttft_ms: float | None = None
        self.prompt_tokens: int | None = None  # None until the first delta
        self.completion_tokens: dict[int, int] = {}  # choice index -> its running total
        self.finish_reasons: dict[int, str] = {}  # choice index -> how it ended
        self.error: StreamError | None = None

    async def watch(self, items: AsyncIterator[Delta | StreamError]) -> AsyncIterator[Delta | StreamError]:
        self._enter("waiting")
        async for item in items:
            if isinstance(item, StreamError):
                self.error = item
            else:
                self._observe(item)
            yield item

    def _observe(self, delta: Delta) -> None:
        now = time.perf_counter()
        if self.ttft_ms is None and delta.text:
            self.ttft_ms = (now - self.started) * 1000
            if self.metrics is not None and self.model_id is not None:
                self.metrics.ttft.labels(self.model_id).observe(self.ttft_ms / 1000)
        self._enter("running")
        if delta.queued_s is not None and self.metrics is not None and self.model_id is not None:
            self.metrics.queue.labels(self.model_id).observe(delta.queued_s)
        self.prompt_tokens = delta.prompt_tokens
        if delta.index not in self.finish_reasons:  # the streaming layer ignores anything after a choice's end
            new_tokens = delta.completion_tokens - self.completion_tokens.get(delta.index, 0)
            self._inter_token(now, new_tokens)
            self.completion_tokens[delta.index] = delta.completion_tokens
            if delta.finish_reason is not None:
                self.finish_reasons[delta.index] = delta.finish_reason

    def _inter_token(self, now: float, new_tokens: int) -> None:
        """The time between tokens, as vLLM measures it: a delta that brings k tokens after a gap brings k gaps of
        gap / k (a replica merges the tokens a slow consumer missed into one delta)."""
        if new_tokens <= 0:
            return
        if self._last_token_at is not None and self.metrics is not None and self.model_id is not None:
            histogram = self.metrics.itl.labels(self.model_id)
            gap = (now - self._last_token_at) / new_tokens
            for _ in range(min(new_tokens, 64)):
                histogram.observe(gap)
        self._last_token_at = now

    def _enter(self, phase: str | None) -> None:
        """Move this request between the waiting and running gauges (None: out of both)."""
        if self.metrics is None or self.model_id is None:
            return
        gauge = None if phase is None else (self.metrics.waiting if phase == "waiting" else self.metrics.running)
        if gauge is self._phase:
            return
        if self._phase is not None:
            self._phase.labels(self.model_id).dec()
        if gauge is not None:
            gauge.labels(self.model_id).inc()
        self._phase = gauge

    @property
    def completed(self) -> bool:
        """Every choice finished and nothing failed."""
        return self.error is None and len(self.finish_reasons) >= self.choices

    def final_status(self, status_code: int) -> int:
        """The status to record: a 200 stream that the client left before its end is 499 (client closed request)."""
        if status_code == 200 and self.error is None and not self.completed:
            return CLIENT_CLOSED
        return status_code

    def _count(self, status_code: int) -> None:
        """The request's part of the metrics, once it has ended."""
        if self.metrics is None:
            return
        self._enter(None)
        model = self.model_id or ""  # only served models' names: a client's arbitrary name would be a new series
        self.metrics.requests.labels(model, str(status_code)).inc()
        if status_code == 429:
            self.metrics.rejected.labels(model, "429").inc()
        if self.model_id is None:
            return
        self.metrics.prompt_tokens.labels(model).inc(self.prompt_tokens or 0)
        self.metrics.generation_tokens.labels(model).inc(sum(self.completion_tokens.values()))
        if status_code == 200 and self.completed:
            self.metrics.e2e.labels(model).observe(time.perf_counter() - self.started)

    def _finish_reason(self, status_code: int) -> str | None:
        """The record's one finish reason: choice 0's, "error", or "abort" for a client that left before the end."""
        if self.error:
            return "error"
        if status_code == CLIENT_CLOSED:
            return "abort"
        if self.prompt_tokens is None:
            return None
        return self.finish_reasons.get(0)

    def finish(self, status_code: int) -> None:
        status_code = self.final_status(status_code)
        self._count(status_code)
        if self.on_record is None:
            return
        record = CompletionRecord(
            id=self.request_id or f"rejected-{uuid.uuid4().hex}",  # refused before it got an id
            model=self.model,
            status_code=status_code,
            finish_reason=self._finish_reason(status_code),
            prompt_tokens=self.prompt_tokens or 0,
            completion_tokens=sum(self.completion_tokens.values()),  # every choice's tokens, as in the usage
            ttft_ms=self.ttft_ms,
            latency_ms=(time.perf_counter() - self.started) * 1000,
            stream=self.stream,
            created_at=self.created_at,
            key_id=self.key_id,
        )
        try:
            self.on_record(record)
        except Exception:  # a storage boundary: a broken recorder must never fail the request it describes
            logger.exception("could not record request %s", self.request_id)
