"""Stored chat completions (OpenAI's `store: true`): keep, fetch, list, delete, and purge by age.

A stored completion belongs to the key that made it, and every read or delete names that key: key_id None (the
spec's single api_key, or no auth) matches only completions made without a key, so one key never sees another's.
The request and the response are kept as JSON text, escaped to ASCII so any text a client sent (a NUL, a lone
surrogate) is stored on PostgreSQL as on SQLite. Plain synchronous calls: the ingress calls them off its event loop.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import delete, or_, select

from runtime.store.errors import StoreError
from runtime.store.models import StoredCompletionRow, as_utc
from runtime.store.sessions import session


class CompletionNotFound(StoreError):
    """The stored completion named (as a list's `after` cursor) does not exist for this key."""


@dataclass(frozen=True)
class StoredCompletion:
    id: str  # the chatcmpl-... id
    key_id: str | None  # the owner; None: the spec's api_key or no auth
    model: str
    created_at: datetime
    metadata: dict[str, Any]
    request: dict[str, Any]  # the request body as the client sent it
    response: dict[str, Any]  # the ChatCompletion as returned


def save_completion(url: str | None, completion: StoredCompletion) -> None:
    """Keep one completion. An id kept already is a `StoreError` (ids are unique per completion)."""
    row = StoredCompletionRow(
        id=completion.id,
        key_id=completion.key_id,
        model=completion.model,
        created_at=as_utc(completion.created_at),
        metadata_=_dump(completion.metadata),
        request=_dump(completion.request),
        response=_dump(completion.response),
    )
    with session(url, "write to") as db:
        db.add(row)


def get_completion(url: str | None, id: str, key_id: str | None) -> StoredCompletion | None:
    """The completion `id` if it belongs to `key_id`, else None (whether it exists for another key is not said)."""
    with session(url, "read") as db:
        row = db.scalar(select(StoredCompletionRow).where(StoredCompletionRow.id == id, _owned_by(key_id)))
        return None if row is None else _completion(row)


def list_completions(
    url: str | None,
    key_id: str | None,
    model: str | None = None,
    after: str | None = None,
    limit: int = 20,
    order: Literal["asc", "desc"] = "asc",
    metadata: Mapping[str, str] | None = None,
) -> tuple[list[StoredCompletion], bool]:
    """A page of `key_id`'s completions by creation time (then id), and whether more follow it.

    after: the id of the last completion of the previous page (OpenAI's cursor); one this key does not own raises
    `CompletionNotFound`. model: only this model's. metadata: only those whose metadata holds every pair (matched
    here, not in SQL, as JSON text is not portably queryable; the page is still full and `has_more` still true).
    """
    if limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    if order not in ("asc", "desc"):
        raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")
    table = StoredCompletionRow
    where = [_owned_by(key_id)]
    if model is not None:
        where.append(table.model == model)
    ascending = order == "asc"
    columns = (table.created_at, table.id) if ascending else (table.created_at.desc(), table.id.desc())
    with session(url, "read") as db:
        if after is not None:
            cursor = db.execute(select(table.created_at, table.id).where(table.id == after, _owned_by(key_id))).first()
            if cursor is None:
                raise CompletionNotFound(f"no stored chat completion {after!r} to list after")
            same_time = table.created_at == cursor.created_at
            if ascending:
                where.append(or_(table.created_at > cursor.created_at, same_time & (table.id > after)))
            else:
                where.append(or_(table.created_at < cursor.created_at, same_time & (table.id < after)))
        if metadata:
            ids = _matching_ids(db, select(table.id, table.metadata_).where(*where).order_by(*columns), metadata, limit)
            where = [table.id.in_(ids)]
        rows = list(db.scalars(select(table).where(*where).order_by(*columns).limit(limit + 1)))
    return [_completion(row) for row in rows[:limit]], len(rows) > limit


def _matching_ids(db, query, metadata: Mapping[str, str], limit: int) -> list[str]:
    """The ids of the first limit + 1 rows whose metadata holds every pair, reading only ids and metadata."""
    found: list[str] = []
    with db.execute(query.execution_options(yield_per=500)) as rows:  # closes the cursor when the page is full
        for id_, text in rows:
            stored = json.loads(text)
            if all(stored.get(name) == value for name, value in metadata.items()):
                found.append(id_)
                if len(found) > limit:
                    break
    return found


def delete_completion(url: str | None, id: str, key_id: str | None) -> bool:
    """Delete the completion `id` if it belongs to `key_id`; False when there was none."""
    with session(url, "write to") as db:
        result = db.execute(delete(StoredCompletionRow).where(StoredCompletionRow.id == id, _owned_by(key_id)))
        return result.rowcount > 0


def purge_completions(url: str | None, older_than: datetime) -> int:
    """Delete every completion created before `older_than` (the retention limit); return how many."""
    with session(url, "write to") as db:
        result = db.execute(delete(StoredCompletionRow).where(StoredCompletionRow.created_at < as_utc(older_than)))
        return result.rowcount


def _owned_by(key_id: str | None):
    column = StoredCompletionRow.key_id
    return column.is_(None) if key_id is None else column == key_id


def _dump(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))  # ensure_ascii (the default) escapes NULs and lone surrogates


def _completion(row: StoredCompletionRow) -> StoredCompletion:
    return StoredCompletion(
        id=row.id,
        key_id=row.key_id,
        model=row.model,
        created_at=as_utc(row.created_at),
        metadata=json.loads(row.metadata_),
        request=json.loads(row.request),
        response=json.loads(row.response),
    )
