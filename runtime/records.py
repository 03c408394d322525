"""The one record of a finished chat completion, from the ingress's meter to the database's requests table, and
where an app sends them.

Standard library only: the HTTP layer builds it, the store writes it, and neither imports the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone

# nginx's "client closed request": recorded for a client that left before its answer was complete; not an error.
CLIENT_CLOSED = 499


@dataclass(frozen=True)
class Recording:
    """Where an app records each completion: the database, and the id of the `aana up` run there."""

    database_url: str
    run_id: str | None


@dataclass(frozen=True)
class CompletionRecord:
    """One chat completion as the server answered it: who, how long, how many tokens, how it ended.

    `id` is the chatcmpl-... id the client saw (a `rejected-...` id for a request refused before it got one).
    `run_id` None: the recorder's own run (the `aana up` that serves it).
    `key_id` None: made with the spec's single api_key, or on a server without authentication.
    """

    id: str
    model: str
    status_code: int
    latency_ms: float
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None
    ttft_ms: float | None = None
    stream: bool = False
    created_at: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    run_id: str | None = None
    key_id: str | None = None  # the API key (api_keys.id) that made the request
