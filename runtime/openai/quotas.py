"""Per-key limits: requests per minute and tokens per minute, with the `limits` library (fixed one-minute windows).

A request takes one request and its token estimate (prompt + the most it may generate) at admission; when it ends,
the estimate is corrected by what it really used. Beyond a limit: 429 with `Retry-After`; every answer to a limited
key carries OpenAI's `x-ratelimit-*` headers. `Quotas` holds the counters and is synchronous: in an app it lives in
one Ray actor that every front replica calls (`runtime.app.QuotaKeeper`), so the limits hold across replicas; tests
use it in-process. Pure: no FastAPI, no Ray.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import FixedWindowRateLimiter


@dataclass(frozen=True)
class Decision:
    """What one request may do: `allowed`, the headers to send, and when refused, why and for how long."""

    allowed: bool
    headers: dict[str, str] = field(default_factory=dict)
    retry_after_s: int = 0
    message: str = ""


def _reset(seconds: float) -> str:
    """OpenAI's reset format: "1s", "6m0s"."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{math.ceil(seconds)}s"
    return f"{int(seconds // 60)}m{math.ceil(seconds % 60)}s"


class Quotas:
    def __init__(self) -> None:
        self.storage = MemoryStorage()
        self.limiter = FixedWindowRateLimiter(self.storage)

    def take(self, key_id: str, rpm: int | None, tpm: int | None, tokens: int) -> Decision:
        """Count one request of about `tokens` tokens for the key, or refuse it (and count nothing)."""
        checks = [("requests", RateLimitItemPerMinute(rpm), 1)] if rpm else []
        if tpm:
            if tokens > tpm:
                return Decision(False, self._headers(key_id, rpm, tpm), 60, f"this request may use up to {tokens} "
                                f"tokens, more than this key's {tpm} tokens per minute; lower max_tokens")  # fmt: skip
            checks.append(("tokens", RateLimitItemPerMinute(tpm), tokens))
        for what, item, cost in checks:
            if not self.limiter.test(item, key_id, what, cost=cost):
                stats = self.limiter.get_window_stats(item, key_id, what)
                wait = max(1, math.ceil(stats.reset_time - time.time()))
                limit = rpm if what == "requests" else tpm
                return Decision(False, self._headers(key_id, rpm, tpm), wait, f"rate limit reached for {what} per "
                                f"minute on this key (limit {limit}); retry after {wait} s")  # fmt: skip
        for what, item, cost in checks:
            self.limiter.hit(item, key_id, what, cost=cost)
        return Decision(True, self._headers(key_id, rpm, tpm))

    def settle(self, key_id: str, tpm: int | None, reserved: int, used: int) -> None:
        """Correct a request's token estimate by what it used (within the same window; a new window starts clean)."""
        if not tpm or reserved == used:
            return
        window = RateLimitItemPerMinute(tpm).key_for(key_id, "tokens")
        if used < reserved:
            self.storage.decr(window, reserved - used)
        else:
            self.storage.incr(window, 60, used - reserved)

    def _headers(self, key_id: str, rpm: int | None, tpm: int | None) -> dict[str, str]:
        headers = {}
        for what, limit in (("requests", rpm), ("tokens", tpm)):
            if not limit:
                continue
            stats = self.limiter.get_window_stats(RateLimitItemPerMinute(limit), key_id, what)
            headers[f"x-ratelimit-limit-{what}"] = str(limit)
            headers[f"x-ratelimit-remaining-{what}"] = str(max(0, stats.remaining))
            headers[f"x-ratelimit-reset-{what}"] = _reset(stats.reset_time - time.time())
        return headers
