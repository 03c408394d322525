"""Several `aana migrate` processes on one database at once: one applies the revisions, the others wait and find
the schema current. The test holds the migration lock while they start, so all of them really contend for it."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager

from sqlalchemy import create_engine, inspect, text

from runtime.store import migrate
from runtime.store.db import MIGRATION_LOCK_KEY, parse_url

PROCESSES = 3


@contextmanager
def migration_lock_held(url):
    """Hold the lock a migration takes first (SQLite: the write lock; PostgreSQL: the advisory lock)."""
    parsed = parse_url(url)
    if parsed.get_backend_name() == "sqlite":
        conn = sqlite3.connect(parsed.database, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        finally:
            conn.execute("COMMIT")
            conn.close()
        return
    engine = create_engine(parsed)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY})
    finally:
        engine.dispose()


def waiting_for_advisory_lock(url) -> int:
    engine = create_engine(parse_url(url))
    try:
        with engine.connect() as conn:
            return conn.scalar(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = :key AND NOT granted"),
                {"key": MIGRATION_LOCK_KEY},
            )
    finally:
        engine.dispose()


def test_concurrent_migrations_apply_each_revision_once(database_url):
    is_postgres = parse_url(database_url).get_backend_name() == "postgresql"
    with ProcessPoolExecutor(PROCESSES, mp_context=multiprocessing.get_context("spawn")) as pool:
        # Start every worker before taking the lock, so the wait below is spent blocked on it, not starting Python.
        for started in [pool.submit(time.sleep, 0.2) for _ in range(PROCESSES)]:
            started.result(timeout=60)
        with migration_lock_held(database_url):
            futures = [pool.submit(migrate.upgrade, database_url) for _ in range(PROCESSES)]
            deadline = time.monotonic() + 20
            if is_postgres:
                while waiting_for_advisory_lock(database_url) < PROCESSES and time.monotonic() < deadline:
                    time.sleep(0.05)
                assert waiting_for_advisory_lock(database_url) == PROCESSES
            else:
                time.sleep(2.0)  # SQLite shows no lock waiters; give the workers time to import and block
            assert not any(future.done() for future in futures), [f.exception() for f in futures if f.done()]
        results = [future.result(timeout=60) for future in futures]

    assert sorted(len(applied) for applied in results) == [0] * (PROCESSES - 1) + [5]
    assert [r.rev for r in max(results, key=len)] == ["0001", "0002", "0003", "0004", "0005"]
    engine = create_engine(parse_url(database_url))
    try:
        assert set(inspect(engine).get_table_names()) == {
            "alembic_version",
            "runs",
            "requests",
            "api_keys",
            "stored_completions",
        }
        with engine.connect() as conn:
            assert list(conn.scalars(text("SELECT version_num FROM alembic_version"))) == ["0005"]
    finally:
        engine.dispose()
    assert migrate.status(database_url).is_current
