"""Runs and what `aana status` reads: one row per `aana up` (a run), its state changes, and request statistics.

Each call opens the database, does one short transaction, and closes it: these happen a few times per run, and a
held connection would outlive a database restart for nothing.
"""

from __future__ import annotations

import hashlib
import math
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import select, update

from runtime.records import CLIENT_CLOSED
from runtime.store.db import mask_url
from runtime.store.errors import StoreError
from runtime.store.models import Request, Run, as_utc
from runtime.store.sessions import session as _session

# lost: the `aana up` that owned the run died without recording its end (noticed later, see mark_lost).
STATES = ("starting", "running", "stopped", "failed", "lost")


@dataclass(frozen=True)
class ModelStats:
    """Requests to one model since a time. Percentiles interpolate linearly, like PostgreSQL's percentile_cont."""

    model: str
    count: int
    errors: int  # responses with status_code >= 400, except 499 (the client left)
    streamed: int
    prompt_tokens: int
    completion_tokens: int
    ttft_p50_ms: float | None  # None when no request in the window measured a first token
    ttft_p95_ms: float | None
    latency_p50_ms: float
    latency_p95_ms: float


def spec_hash(spec_text: str) -> str:
    """The sha256 hex digest of the spec as written."""
    return hashlib.sha256(spec_text.encode("utf-8")).hexdigest()


def record_start(
    url: str,
    app_name: str,
    spec_text: str,
    ray_address: str | None,
    base_url: str,
    *,
    state: str = "starting",
    now: datetime | None = None,
) -> str:
    """Add the row for a new `aana up` run and return its id (a uuid4 string)."""
    _check_state(state)
    run = Run(
        id=str(uuid.uuid4()),
        app_name=app_name,
        spec_text=spec_text,
        spec_hash=spec_hash(spec_text),
        ray_address=ray_address,
        base_url=base_url,
        started_at=now or datetime.now(timezone.utc),
        state=state,
    )
    with _session(url, "write to") as session:
        session.add(run)
    return run.id


def record_state(url: str, run_id: str, state: str, error: str | None = None) -> None:
    """Set a run's state (and its error text, for "failed")."""
    _check_state(state)
    _update(url, run_id, state=state, error=error)


def record_stop(
    url: str, run_id: str, state: str = "stopped", error: str | None = None, *, now: datetime | None = None
) -> None:
    """Mark a run as ended: its final state and when it stopped."""
    _check_state(state)
    _update(url, run_id, state=state, error=error, stopped_at=now or datetime.now(timezone.utc))


def mark_lost(url: str, run_id: str, reason: str, *, now: datetime | None = None) -> bool:
    """Mark a run that is still starting or running as lost, noticed now; False when it had already ended."""
    with _session(url, "write to") as session:
        result = session.execute(
            update(Run)
            .where(Run.id == run_id, Run.state.in_(("starting", "running")))
            .values(state="lost", error=reason, stopped_at=now or datetime.now(timezone.utc))
        )
        return result.rowcount > 0


def get_run(url: str, run_id: str) -> Run | None:
    """The run with this id, or None."""
    with _session(url, "read") as session:
        return session.get(Run, run_id)


def recent_runs(url: str, limit: int = 10, app_name: str | None = None) -> list[Run]:
    """The newest runs first, optionally of one app."""
    query = select(Run).order_by(Run.started_at.desc()).limit(limit)
    if app_name is not None:
        query = query.where(Run.app_name == app_name)
    with _session(url, "read") as session:
        return list(session.scalars(query))


def request_stats(url: str, since: datetime, run_id: str | None = None) -> list[ModelStats]:
    """Per-model counts, errors, tokens and p50/p95 of time to first token and latency, for requests since `since`.

    Sorted by model name. Percentiles are computed here rather than in SQL so SQLite and PostgreSQL agree.
    """
    query = select(
        Request.model,
        Request.status_code,
        Request.stream,
        Request.prompt_tokens,
        Request.completion_tokens,
        Request.ttft_ms,
        Request.latency_ms,
    ).where(Request.created_at >= as_utc(since))
    if run_id is not None:
        query = query.where(Request.run_id == run_id)
    by_model: dict[str, list] = {}
    with _session(url, "read") as session:
        for row in session.execute(query):
            by_model.setdefault(row.model, []).append(row)
    return [_model_stats(model, rows) for model, rows in sorted(by_model.items())]


def _model_stats(model: str, rows: list) -> ModelStats:
    ttfts = sorted(row.ttft_ms for row in rows if row.ttft_ms is not None)
    latencies = sorted(row.latency_ms for row in rows)
    return ModelStats(
        model=model,
        count=len(rows),
        errors=sum(1 for row in rows if row.status_code >= 400 and row.status_code != CLIENT_CLOSED),
        streamed=sum(1 for row in rows if row.stream),
        prompt_tokens=sum(row.prompt_tokens for row in rows),
        completion_tokens=sum(row.completion_tokens for row in rows),
        ttft_p50_ms=percentile(ttfts, 0.5),
        ttft_p95_ms=percentile(ttfts, 0.95),
        latency_p50_ms=percentile(latencies, 0.5),
        latency_p95_ms=percentile(latencies, 0.95),
    )


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-quantile of already sorted values by linear interpolation between closest ranks; None when empty."""
    if not sorted_values:
        return None
    position = (len(sorted_values) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def _update(url: str, run_id: str, **values) -> None:
    with _session(url, "write to") as session:
        result = session.execute(update(Run).where(Run.id == run_id).values(**values))
        if result.rowcount == 0:
            raise StoreError(f"no run {run_id!r} in the database at {mask_url(url)}")


def _check_state(state: str) -> None:
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
