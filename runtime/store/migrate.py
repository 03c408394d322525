"""The schema's lifecycle: which revision a database is at, and moving it up or down (what `aana migrate` calls).

The Alembic config is built in code from the installed `migrations` package, so this works from any directory and
from a wheel. Revisions are linear ("0001", "0002", ...). Every failure a person can fix is a `StoreError`; a
database whose schema does not match this code is a `SchemaError` that names the command to run.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection

from runtime.store.db import (
    lock_for_migration,
    make_engine,
    mask_url,
    parse_url,
    resolve_database_url,
    translated_errors,
)
from runtime.store.errors import SchemaError, StoreError

__all__ = [
    "MigrationResult",
    "MigrationStatus",
    "Revision",
    "migrate_command",
    "migrate_to",
    "require_current",
    "resolve_database_url",
    "revisions",
    "sql",
    "status",
    "upgrade",
]


class Revision(NamedTuple):
    rev: str
    description: str


@dataclass(frozen=True)
class MigrationStatus:
    """Where a database stands. `applied` and `pending` are in the order they run (oldest first)."""

    url: str  # password masked
    current: str | None  # None: no aana tables yet
    head: str
    applied: list[Revision] = field(default_factory=list)
    pending: list[Revision] = field(default_factory=list)

    @property
    def is_current(self) -> bool:
        return self.current == self.head


@dataclass(frozen=True)
class MigrationResult:
    """What a migration run did: the revisions applied ("up") or reverted ("down"), in the order they ran."""

    direction: Literal["up", "down", "none"]
    revisions: list[Revision]
    current: str | None  # the revision the database is at afterwards


def revisions() -> list[Revision]:
    """Every revision this version of aana knows, oldest first."""
    return [Revision(script.revision, script.doc.rstrip(".")) for script in _history(_scripts())]


def status(url: str) -> MigrationStatus:
    """The database's revision, the newest one this code knows, and what is applied and pending."""
    known = revisions()
    with _connection(url) as conn, translated_errors(url, "read"):
        current = _known_current(url, conn, known)
    return _status(url, current, known)


def upgrade(url: str, to: str = "head") -> list[Revision]:
    """Apply the pending revisions up to `to` (default: all) and return those applied (empty when current).

    Safe to run from several processes at once: one applies, the others wait and apply nothing.
    """
    result = migrate_to(url, to, allow_down=False)
    return result.revisions


def migrate_to(url: str, rev: str, *, allow_down: bool = True) -> MigrationResult:
    """Move the database to revision `rev` ("head", "base" or an id such as "0002"), up or down."""
    known = revisions()
    target = _target(rev, known)
    config = _config(url)
    with _connection(url, immediate=True) as conn, translated_errors(url, "migrate"), conn.begin():
        # The lock comes first so the direction is decided on the revision no other run is about to change.
        lock_for_migration(conn)
        current = _known_current(url, conn, known)
        ids = [None] + [r.rev for r in known]
        direction = _direction(ids.index(current), ids.index(target))
        if direction == "down" and not allow_down:
            raise StoreError(
                f"the database at {mask_url(url)} is at revision {current}, past {rev}; "
                f"going down is `aana migrate --to {rev}`"
            )
        if direction == "none":
            return MigrationResult("none", [], current)
        config.attributes["connection"] = conn
        steps: list[tuple[str, str, bool]] = []
        config.attributes["steps"] = steps
        with _alembic_errors():
            if direction == "up":
                command.upgrade(config, target)
            else:
                command.downgrade(config, target or "base")
    by_id = {r.rev: r for r in known}
    done = [by_id[rev_id] for rev_id, _, _ in steps]
    return MigrationResult(direction if done else "none", done, target)


def sql(url: str, to: str = "head", start: str | None = None) -> str:
    """The SQL that would move a database from `start` to `to`, for a person to review or run by hand.

    Needs no server or driver, only the URL's dialect. start defaults to an empty database when going up, and to
    "head" when `to` is "base" (the SQL that removes everything).
    """
    known = revisions()
    target = _target(to, known)
    if start is None:
        begin = known[-1].rev if target is None else None
    else:
        begin = _target(start, known)
    ids = [None] + [r.rev for r in known]
    direction = _direction(ids.index(begin), ids.index(target))
    parse_url(url)  # a bad URL is a StoreError here, not deep inside Alembic
    buffer = io.StringIO()
    config = _config(url, output_buffer=buffer)
    with _alembic_errors():
        if direction == "up":
            command.upgrade(config, f"{begin}:{target}" if begin else target, sql=True)
        elif direction == "down":
            command.downgrade(config, f"{begin}:{target or 'base'}", sql=True)
    return buffer.getvalue()


def require_current(url: str, command: str = "aana migrate") -> MigrationStatus:
    """The status when the schema is exactly what this code expects; otherwise a `SchemaError` naming `command`.

    command: the exact command that brings this database up to date (see `migrate_command`).
    """
    current = status(url)
    if current.is_current:
        return current
    count = len(current.pending)
    pending = f"{count} migration{'s' if count != 1 else ''} pending: " + ", ".join(
        f"{r.rev} ({r.description})" for r in current.pending
    )
    where = f"is at revision {current.current}" if current.current else "has no aana tables yet"
    raise SchemaError(f"the database at {current.url} {where} ({pending}). Run `{command}`")


def migrate_command(url: str, source: str, spec_path: str | None = None) -> str:
    """The `aana migrate` invocation that reaches the same database as a command that resolved `url` from `source`.

    source: as returned by `resolve_database_url`. The password, if any, is masked: fill it in.
    """
    if source == "--database-url":
        return f"aana migrate --database-url '{mask_url(url)}'"
    if source == "spec database.url" and spec_path:
        return f"aana migrate --spec {spec_path}"
    return "aana migrate"


def _status(url: str, current: str | None, known: list[Revision]) -> MigrationStatus:
    ids = [r.rev for r in known]
    applied_count = 0 if current is None else ids.index(current) + 1
    return MigrationStatus(
        url=mask_url(url),
        current=current,
        head=known[-1].rev,
        applied=known[:applied_count],
        pending=known[applied_count:],
    )


def _known_current(url: str, conn: Connection, known: list[Revision]) -> str | None:
    current = MigrationContext.configure(conn).get_current_revision()
    if current is not None and current not in {r.rev for r in known}:
        raise SchemaError(
            f"the database at {mask_url(url)} is at revision {current}, which this version of aana does not know "
            f"(its newest is {known[-1].rev}); upgrade aana or point at another database"
        )
    return current


def _target(rev: str, known: list[Revision]) -> str | None:
    """The revision id `rev` names (None for base), or a StoreError listing the valid ones."""
    if rev == "base":
        return None
    if rev in ("head", "heads"):
        return known[-1].rev
    if rev in {r.rev for r in known}:
        return rev
    valid = ", ".join(["base"] + [f"{r.rev} ({r.description})" for r in known] + ["head"])
    raise StoreError(f"unknown revision {rev!r}; valid revisions: {valid}")


def _direction(current_index: int, target_index: int) -> Literal["up", "down", "none"]:
    if target_index > current_index:
        return "up"
    if target_index < current_index:
        return "down"
    return "none"


@contextmanager
def _connection(url: str, *, immediate: bool = False) -> Iterator[Connection]:
    engine = make_engine(url, immediate=immediate, pool=False)
    try:
        with translated_errors(url, "connect to"):
            conn = engine.connect()
        with conn:
            yield conn
    finally:
        engine.dispose()


@contextmanager
def _alembic_errors() -> Iterator[None]:
    try:
        yield
    except CommandError as error:
        raise StoreError(f"migration failed: {error}") from error


def _config(url: str, output_buffer: io.StringIO | None = None) -> Config:
    config = Config(output_buffer=output_buffer)
    config.set_main_option("script_location", str(_migrations_folder()))
    config.attributes["url"] = url
    return config


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config(""))


def _history(scripts: ScriptDirectory) -> list:
    heads = scripts.get_heads()
    if len(heads) != 1:
        raise StoreError(f"aana's migrations have {len(heads)} heads ({', '.join(heads)}); this aana install is broken")
    return list(reversed(list(scripts.walk_revisions())))


def _migrations_folder() -> Path:
    try:
        package = importlib.import_module("migrations")
    except ImportError as error:
        raise StoreError("aana's `migrations` package is not installed; reinstall aana") from error
    if not getattr(package, "AANA_MIGRATIONS", False):
        where = package.__file__ or ", ".join(getattr(package, "__path__", []))
        raise StoreError(
            f"the `migrations` package found at {where} is not aana's (another project's folder on sys.path, or an "
            "editable install made before the package existed?); run aana from another directory or reinstall it"
        )
    return Path(package.__file__).parent
