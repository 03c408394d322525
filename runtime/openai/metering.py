"""What one chat completion cost and how it ended, measured at the ingress, for whoever keeps the records.

A `Meter` watches the engine items of one request on their way to the client: the first text (time to first token),
the last delta (finish reason, token counts) and in-band errors. The ingress hands the finished `CompletionRecord` to
an optional callback; it never waits on it, so storage can never slow or fail a request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime, timezone

from runtime.engines.base import Delta, StreamError

logger = logging.getLogger("aana.ingress")


@dataclass(frozen=True)
class CompletionRecord:
    request_id: str
    model: str
    status_code: int
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    ttft_ms: float | None
    latency_ms: float
    stream: bool
    created_at: datetime


OnRecord = Callable[[CompletionRecord], None]


class Meter:
    def __init__(self, on_record: OnRecord | None):
        self.on_record = on_record
        self.started = time.perf_counter()
        self.created_at = datetime.now(timezone.utc)
        self.request_id = ""
        self.model = ""
        self.stream = False
        self.ttft_ms: float | None = None
        self.last: Delta | None = None
        self.error: StreamError | None = None

    async def watch(self, items: AsyncIterator[Delta | StreamError]) -> AsyncIterator[Delta | StreamError]:
        async for item in items:
            if isinstance(item, StreamError):
                self.error = item
            else:
                if self.ttft_ms is None and item.text:
                    self.ttft_ms = (time.perf_counter() - self.started) * 1000
                self.last = item
            yield item

    def finish(self, status_code: int) -> None:
        if self.on_record is None:
            return
        last = self.last
        finish = "error" if self.error else (last.finish_reason if last else None)
        if status_code == 200 and last is not None and last.finish_reason is None and not self.error:
            finish = "abort"  # the client went away before the end
        record = CompletionRecord(
            request_id=self.request_id,
            model=self.model,
            status_code=status_code,
            finish_reason=finish,
            prompt_tokens=last.prompt_tokens if last else 0,
            completion_tokens=last.completion_tokens if last else 0,
            ttft_ms=self.ttft_ms,
            latency_ms=(time.perf_counter() - self.started) * 1000,
            stream=self.stream,
            created_at=self.created_at,
        )
        try:
            self.on_record(record)
        except Exception:  # a storage boundary: a broken recorder must never fail the request it describes
            logger.exception("could not record request %s", self.request_id)
