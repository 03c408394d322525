"""Alembic environment for aana: run the scripts in versions/ online (on a connection) or offline (`--sql`).

`runtime.store.migrate` builds the config in code and passes what this needs in `config.attributes`:
  connection  an open connection to migrate on (else one is opened from "url");
  url         the database URL (offline mode needs only its dialect, not a driver or a server);
  steps       a list that receives (revision, description, is_upgrade) for each step run.

Online, the whole run is one transaction, and two `aana migrate` runs on one database never both apply a revision:
on PostgreSQL the run first takes a transaction-level advisory lock; on SQLite `runtime.store.db.make_engine`
begins every migration transaction with BEGIN IMMEDIATE. The second run waits, then finds the schema current.
"""

from __future__ import annotations

from alembic import context

from runtime.store.db import lock_for_migration, make_engine, parse_url
from runtime.store.models import Base

config = context.config
target_metadata = Base.metadata  # for `alembic revision --autogenerate` while developing; never used at runtime


def _url() -> str:
    url = config.attributes.get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("aana's migrations need a database URL: config.attributes['url'] or sqlalchemy.url")
    return url


def _record_step(ctx, step, heads, run_args) -> None:
    steps = config.attributes.get("steps")
    if steps is not None:
        steps.append((step.up_revision_id, step.up_revision.doc, step.is_upgrade))


def run_offline() -> None:
    context.configure(
        dialect_name=parse_url(_url()).get_backend_name(),
        target_metadata=target_metadata,
        literal_binds=True,
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _migrate(connection)
        return
    engine = make_engine(_url(), immediate=True, pool=False)
    try:
        with engine.connect() as connection:
            _migrate(connection)
    finally:
        engine.dispose()


def _migrate(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite can roll DDL back too (the driver just never began a transaction for it); one transaction for the
        # whole run means a failed migration leaves the schema where it was.
        transactional_ddl=connection.dialect.name in ("sqlite", "postgresql"),
        on_version_apply=_record_step,
    )
    with context.begin_transaction():
        lock_for_migration(connection)
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
