"""One short transaction on a database named by URL (None: the default one), its errors translated to `StoreError`.

Keys, usage and stored completions are each read or written in a call that opens the database, does one short
transaction and closes it: these calls come from a command or a background refresh, and a held connection would
outlive a database restart for nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session

from runtime.store.db import make_engine, resolve_database_url, translated_errors


def database_url(url: str | None) -> str:
    """`url`, or when None the database every command defaults to ($AANA_DATABASE_URL, else the SQLite file)."""
    return url if url else resolve_database_url(None, None)[0]


@contextmanager
def session(url: str | None, doing: str) -> Iterator[Session]:
    """A session in one transaction, committed when the block ends. doing: "read" or "write to", for messages."""
    url = database_url(url)
    engine = make_engine(url, pool=False)
    try:
        with translated_errors(url, "connect to"):
            conn = engine.connect()
        with conn, translated_errors(url, doing), Session(conn, expire_on_commit=False) as db, db.begin():
            yield db
    finally:
        engine.dispose()
