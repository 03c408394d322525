"""Usage per key, model and day (UTC) from the request rows: what `aana usage` shows.

One GROUP BY over a window of requests (found by `ix_requests_created_at`, or for one key by
`ix_requests_key_id_created_at`; migration 0005 says why no wider index), then joined to the few key rows for their
names. The time is the window's rows, not the table's: bench/usage_query.py measures it at 10 M rows. Days are UTC
on every database.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Date, and_, case, func, literal, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from runtime.records import CLIENT_CLOSED
from runtime.store.keys import find_key
from runtime.store.models import ApiKeyRow, Request, as_utc
from runtime.store.sessions import database_url, session

NO_KEY = "-"  # the key column of requests made without a key (the spec's api_key, or no auth)


@dataclass(frozen=True)
class UsageRow:
    day: date  # UTC
    key: str  # the key's name, or NO_KEY
    model: str
    requests: int
    errors: int  # status >= 400, except 499 (the client left)
    prompt_tokens: int
    completion_tokens: int


class utc_day(FunctionElement):
    """The UTC calendar day of a timestamp column, as a DATE."""

    type = Date()
    inherit_cache = True


@compiles(utc_day)
def _utc_day(element, compiler, **kw) -> str:
    # SQLite keeps UTC wall-clock text ("2025-06-01 12:00:00.000000"): its date() is the day.
    return f"date({compiler.process(element.clauses, **kw)})"


@compiles(utc_day, "postgresql")
def _utc_day_postgresql(element, compiler, **kw) -> str:
    # A bare ::date would use the session's time zone.
    return f"CAST(({compiler.process(element.clauses, **kw)} AT TIME ZONE 'UTC') AS DATE)"


def usage(url: str | None, since: datetime, key: str | None = None, model: str | None = None) -> list[UsageRow]:
    """Requests since `since`, per key, model and UTC day; sorted by key name, model, day.

    key: a key's name or prefix (`runtime.store.keys.find_key`; raises `KeyNotFound`), or NO_KEY for the requests
    made without one. model: only this model.
    """
    url = database_url(url)
    day = utc_day(Request.created_at)
    failed = and_(Request.status_code >= 400, Request.status_code != CLIENT_CLOSED)
    per_key = (
        select(
            day.label("day"),
            Request.key_id,
            Request.model,
            func.count().label("requests"),
            func.coalesce(func.sum(case((failed, 1), else_=0)), 0).label("errors"),
            func.coalesce(func.sum(Request.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(Request.completion_tokens), 0).label("completion_tokens"),
        )
        .where(Request.created_at >= as_utc(since))
        .group_by(day, Request.key_id, Request.model)
    )
    if model is not None:
        per_key = per_key.where(Request.model == model)
    if key == NO_KEY:
        per_key = per_key.where(Request.key_id.is_(None))
    elif key is not None:
        per_key = per_key.where(Request.key_id == find_key(url, key).id)
    with session(url, "read") as db:
        grouped = per_key.subquery()
        # A key id with no row (written by hand, or a key deleted outside aana) shows as the id itself.
        name = func.coalesce(ApiKeyRow.name, grouped.c.key_id, literal(NO_KEY))
        query = (
            select(grouped, name.label("key"))
            .select_from(grouped.outerjoin(ApiKeyRow, ApiKeyRow.id == grouped.c.key_id))
            .order_by(name, grouped.c.model, grouped.c.day)
        )
        return [
            UsageRow(
                day=row.day,
                key=row.key,
                model=row.model,
                requests=row.requests,
                errors=row.errors,
                prompt_tokens=row.prompt_tokens,
                completion_tokens=row.completion_tokens,
            )
            for row in db.execute(query)
        ]
