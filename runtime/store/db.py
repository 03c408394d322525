"""Where the database is and how to open it: URL resolution, password masking, engines, and error translation.

Every way a database URL can be wrong (unparsable, unknown dialect, driver not installed, server unreachable) ends
here as one `StoreError` whose message names the URL with its password masked and says what to do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, exc, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from runtime.store.errors import StoreError

# Key of the PostgreSQL advisory lock that serialises `aana migrate` runs on one database ("aana" in ASCII).
MIGRATION_LOCK_KEY = 0x61616E61

# Seconds a PostgreSQL connection attempt may take, unless the URL sets connect_timeout itself.
PG_CONNECT_TIMEOUT_S = 10

# Seconds a SQLite connection waits for another process's write lock before giving up.
SQLITE_BUSY_TIMEOUT_S = 60.0

# Installing the extra is the fix a person can act on; the module name alone is not.
_DRIVER_FIX = {
    "psycopg": "pip install 'aana[postgres]'",
    "psycopg2": "pip install 'aana[postgres]' and write the URL as postgresql+psycopg://...",
}


def default_database_url(environ: Mapping[str, str] | None = None) -> str:
    """A SQLite file in the user's data directory ($XDG_DATA_HOME/aana/aana.db, else ~/.local/share/aana/aana.db).

    Creates the folder, so that the first `aana migrate` works on a fresh machine. environ: default os.environ.
    """
    environ = os.environ if environ is None else environ
    xdg = environ.get("XDG_DATA_HOME", "")
    # The XDG spec says a relative XDG_DATA_HOME is invalid and must be ignored.
    if xdg and os.path.isabs(xdg):
        data_home = Path(xdg)
    else:
        data_home = Path(environ.get("HOME") or Path.home()) / ".local" / "share"
    folder = data_home / "aana"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'aana.db'}"


def resolve_database_url(
    cli_url: str | None, spec_url: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str, str]:
    """The database URL to use and where it came from, first set wins.

    Order: the `--database-url` option, the `AANA_DATABASE_URL` environment variable, the spec's `database.url`,
    then the default SQLite file. The second item is one of "--database-url", "AANA_DATABASE_URL",
    "spec database.url" or "default". environ: default os.environ.
    """
    environ = os.environ if environ is None else environ
    for url, source in (
        (cli_url, "--database-url"),
        (environ.get("AANA_DATABASE_URL"), "AANA_DATABASE_URL"),
        (spec_url, "spec database.url"),
    ):
        if url and url.strip():
            return url.strip(), source
    return default_database_url(environ), "default"


def mask_url(url: str | URL) -> str:
    """The URL as it may be shown to a person: the password replaced by ***."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except exc.ArgumentError:
        # Unparsable: still hide anything that looks like `user:password@`.
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


def parse_url(url: str | URL) -> URL:
    """The SQLAlchemy URL, with PostgreSQL pointed at psycopg 3 (the driver `aana[postgres]` installs).

    SQLAlchemy's bare `postgresql://` means psycopg2, and it rejects `postgres://` (what many hosts print).
    """
    try:
        parsed = make_url(url)
    except exc.ArgumentError as error:
        raise StoreError(
            f"{mask_url(url)!r} is not a database URL; expected sqlite:///path/to/aana.db or "
            "postgresql://user:password@host:5432/dbname"
        ) from error
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str | URL, *, immediate: bool = False, pool: bool = True) -> Engine:
    """An engine for `url`, or a `StoreError` naming the fix when its dialect or driver is missing.

    immediate: on SQLite, make every transaction `BEGIN IMMEDIATE` and let DDL join it, so a migration takes the
    database's write lock before it reads the schema version and rolls back as a whole on failure. Other
    processes wait for that lock (up to SQLITE_BUSY_TIMEOUT_S) instead of failing.
    pool: False opens a fresh connection per checkout (what a writer that must notice a vanished file wants).
    """
    parsed = parse_url(url)
    options: dict = {}
    if not pool:
        options["poolclass"] = NullPool
    if parsed.get_backend_name() == "sqlite":
        options["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT_S}
    else:
        options["pool_pre_ping"] = True
        if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
            # A host that drops packets would otherwise hold `aana migrate` (or the recorder) for minutes.
            options["connect_args"] = {"connect_timeout": PG_CONNECT_TIMEOUT_S}
    try:
        engine = create_engine(parsed, **options)
    except exc.NoSuchModuleError as error:
        raise StoreError(
            f"the database URL {mask_url(url)!r} names {parsed.drivername!r}, which SQLAlchemy does not know; "
            "aana supports sqlite:/// and postgresql:// URLs"
        ) from error
    except ImportError as error:
        module = error.name or parsed.get_driver_name()
        fix = _DRIVER_FIX.get(module, f"pip install {module}")
        raise StoreError(
            f"the database URL {mask_url(url)!r} needs the Python driver {module!r}, which is not installed; "
            f"run `{fix}`"
        ) from error
    if immediate and engine.dialect.name == "sqlite":
        _take_write_lock_on_begin(engine)
    return engine


def _take_write_lock_on_begin(engine: Engine) -> None:
    # The pysqlite recipe from SQLAlchemy's SQLite docs: stop the driver from managing BEGIN (it skips it for DDL)
    # and emit our own, IMMEDIATE so the write lock is held from the first read.
    @event.listens_for(engine, "connect")
    def _no_driver_transactions(dbapi_connection, _record):
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection):
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def lock_for_migration(connection: Connection) -> None:
    """Serialise schema changes on this database until the current transaction ends.

    PostgreSQL: a transaction-level advisory lock (re-entrant, released at commit or rollback). SQLite needs nothing
    here: an engine made with immediate=True already holds the write lock from BEGIN IMMEDIATE.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})


@contextmanager
def translated_errors(url: str | URL, doing: str = "use") -> Iterator[None]:
    """Turn driver and connection errors raised inside the block into a `StoreError` that names the URL.

    doing: the verb for the message; "connect to" adds what to check (the folder, or the server and URL).
    """
    try:
        yield
    except exc.DBAPIError as error:
        raise StoreError(_dbapi_message(url, doing, error)) from error


def _dbapi_message(url: str | URL, doing: str, error: exc.DBAPIError) -> str:
    masked = mask_url(url)
    detail = _first_line(str(error.orig) if error.orig is not None else str(error))
    password = _password(url)
    if password:
        detail = detail.replace(password, "***")
    if doing == "connect to":
        return f"could not connect to the database at {masked}: {detail}. {_connect_hint(url)}"
    return f"could not {doing} the database at {masked}: {detail}"


def _connect_hint(url: str | URL) -> str:
    try:
        backend = make_url(url).get_backend_name()
    except exc.ArgumentError:
        backend = ""
    if backend == "sqlite":
        return "Check that the folder exists and is writable, or pass another --database-url."
    return "Check that the server is running and the URL (host, port, user, password, database) is right."


def _password(url: str | URL) -> str | None:
    try:
        return make_url(url).password
    except exc.ArgumentError:
        return None


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].rstrip(".") if text.strip() else "unknown error"
