"""Fixtures for the store tests: every database test runs on SQLite and on PostgreSQL, each on a fresh empty database.

PostgreSQL is the server AANA_TEST_POSTGRES_URL names, or a throwaway one (tests/pg.py) started once per session,
only when a PostgreSQL test runs. Without one the PostgreSQL tests fail; AANA_SKIP_POSTGRES=1 skips them explicitly.
"""

from __future__ import annotations

import os
import uuid

import pytest
from pg import PostgresUnavailable, create_database, drop_database, postgres_server


@pytest.fixture(scope="session")
def postgres_admin_url():
    if os.environ.get("AANA_SKIP_POSTGRES") == "1":
        pytest.skip("AANA_SKIP_POSTGRES=1: PostgreSQL tests skipped on request")
    server = postgres_server()
    try:
        url = server.__enter__()
    except PostgresUnavailable as error:
        pytest.fail(f"PostgreSQL tests need a server: {error}", pytrace=False)
    try:
        yield url
    finally:
        server.__exit__(None, None, None)


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """The URL of a fresh, empty database (no tables, no alembic_version)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'aana.db'}"
        return
    admin_url = request.getfixturevalue("postgres_admin_url")
    name = f"aana_test_{uuid.uuid4().hex[:12]}"
    url = create_database(admin_url, name)
    yield url
    drop_database(admin_url, name)
