"""Every way a database URL can be wrong ends as one StoreError that names the URL (password masked) and the fix."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest
from pg import database_url as url_on_server

from runtime.store import migrate, runs
from runtime.store.db import default_database_url, mask_url, resolve_database_url
from runtime.store.errors import StoreError
from runtime.store.recorder import RequestRecorder


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_not_a_url():
    with pytest.raises(StoreError) as raised:
        migrate.status("aana.db")
    assert str(raised.value) == (
        "'aana.db' is not a database URL; expected sqlite:///path/to/aana.db or "
        "postgresql://user:password@host:5432/dbname"
    )


def test_unknown_dialect():
    with pytest.raises(StoreError) as raised:
        migrate.upgrade("oracle+nosuch://scott:tiger@db/orcl")
    assert str(raised.value) == (
        "the database URL 'oracle+nosuch://scott:***@db/orcl' names 'oracle+nosuch', which SQLAlchemy does not know; "
        "aana supports sqlite:/// and postgresql:// URLs"
    )


def test_missing_postgres_driver(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes `import psycopg` fail as if it were not installed
    with pytest.raises(StoreError) as raised:
        migrate.status("postgresql://aana:s3cret@db:5432/aana")
    assert str(raised.value) == (
        "the database URL 'postgresql://aana:***@db:5432/aana' needs the Python driver 'psycopg', which is "
        "not installed; run `pip install 'aana[postgres]'`"
    )
    # Writing the SQL for a DBA needs only the dialect, not the driver.
    assert "CREATE TABLE deployments" in migrate.sql("postgresql://aana:s3cret@db:5432/aana")


def test_missing_driver_fails_the_recorder_at_construction(monkeypatch):
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(StoreError, match=r"pip install 'aana\[postgres\]'"):
        RequestRecorder("postgres://aana:s3cret@db/aana")


@pytest.mark.parametrize("call", [migrate.status, migrate.upgrade, migrate.require_current, runs.recent_runs])
def test_unreachable_server(call):
    url = f"postgresql://aana:s3cret@127.0.0.1:{free_port()}/aana"
    with pytest.raises(StoreError) as raised:
        call(url)
    message = str(raised.value)
    assert message.startswith("could not connect to the database at postgresql://aana:***@127.0.0.1:")
    assert "Connection refused" in message or "connection failed" in message
    assert message.endswith(
        "Check that the server is running and the URL (host, port, user, password, database) is right."
    )
    assert "s3cret" not in message


def test_missing_database_on_a_running_server(postgres_admin_url):
    url = url_on_server(postgres_admin_url, "no_such_database")
    with pytest.raises(StoreError) as raised:
        migrate.status(url)
    assert 'database "no_such_database" does not exist' in str(raised.value)
    assert str(raised.value).startswith(f"could not connect to the database at {mask_url(url)}: ")


def test_sqlite_file_in_a_missing_folder(tmp_path):
    url = f"sqlite:///{tmp_path / 'missing' / 'aana.db'}"
    with pytest.raises(StoreError) as raised:
        migrate.upgrade(url)
    assert str(raised.value) == (
        f"could not connect to the database at {url}: unable to open database file. "
        "Check that the folder exists and is writable, or pass another --database-url."
    )


def test_no_traceback_reaches_a_person_for_a_bad_url():
    """The CLI prints str(error); the chained SQLAlchemy error stays in __cause__ for logs only."""
    with pytest.raises(StoreError) as raised:
        migrate.status("postgresql://u:pw@[bad")
    assert "pw" not in str(raised.value)


def test_mask_url():
    assert mask_url("postgresql://aana:s3cret@db/aana") == "postgresql://aana:***@db/aana"
    assert mask_url("sqlite:////var/lib/aana.db") == "sqlite:////var/lib/aana.db"
    assert mask_url("weird://user:pass@") == "weird://user:***@"


def test_resolve_database_url_order(tmp_path):
    environ = {"AANA_DATABASE_URL": "sqlite:///env.db", "HOME": str(tmp_path)}
    from_cli = resolve_database_url("sqlite:///cli.db", "sqlite:///spec.db", environ)
    assert from_cli == ("sqlite:///cli.db", "--database-url")
    assert resolve_database_url(None, "sqlite:///spec.db", environ) == ("sqlite:///env.db", "AANA_DATABASE_URL")
    assert resolve_database_url(None, "sqlite:///spec.db", {"HOME": str(tmp_path)}) == (
        "sqlite:///spec.db",
        "spec database.url",
    )
    assert resolve_database_url("", None, {"AANA_DATABASE_URL": "", "HOME": str(tmp_path)}) == (
        f"sqlite:///{tmp_path}/.local/share/aana/aana.db",
        "default",
    )


def test_default_url_follows_xdg_and_creates_the_folder(tmp_path):
    url = default_database_url({"XDG_DATA_HOME": str(tmp_path / "data"), "HOME": str(tmp_path / "home")})
    assert url == f"sqlite:///{tmp_path}/data/aana/aana.db"
    assert (tmp_path / "data" / "aana").is_dir()
    # A relative XDG_DATA_HOME is invalid by the XDG spec: ignored.
    url = default_database_url({"XDG_DATA_HOME": "relative", "HOME": str(tmp_path / "home")})
    assert url == f"sqlite:///{tmp_path}/home/.local/share/aana/aana.db"
    assert Path(tmp_path / "home" / ".local" / "share" / "aana").is_dir()


def test_the_default_database_migrates(tmp_path):
    url, source = resolve_database_url(None, None, {"HOME": str(tmp_path)})
    assert source == "default"
    assert [r.rev for r in migrate.upgrade(url)] == ["0001", "0002", "0003", "0004", "0005"]
    assert (tmp_path / ".local" / "share" / "aana" / "aana.db").is_file()
