"""`aana migrate`: bring the database to the schema this aana expects (Alembic), show where it stands, or print SQL."""

from __future__ import annotations

from pathlib import Path

import typer

from aana_cli import console


def run(database_url: str | None, spec: Path | None, to: str | None, show_status: bool, print_sql: bool) -> None:
    from runtime.store import migrate
    from runtime.store.errors import StoreError

    spec_url = _spec_database_url(spec) if spec else None
    url, source = migrate.resolve_database_url(database_url, spec_url)
    console.err.print(f"database: {console.escape(migrate.mask_url(url))} (from {source})")
    try:
        if print_sql:
            console.out.print(migrate.sql(url, to or "head"), markup=False, highlight=False, soft_wrap=True)
            return
        if show_status:
            raise typer.Exit(_status(migrate.status(url)))
        if to:
            result = migrate.migrate_to(url, to)
            verb = {"up": "applied", "down": "reverted", "none": "nothing to do at"}[result.direction]
        else:
            result = None
            applied = migrate.upgrade(url)
        revisions = result.revisions if result else applied
        if not revisions:
            console.out.print(f"already at revision {migrate.status(url).current or 'base'}; nothing to do")
            return
        for revision in revisions:
            console.out.print(f"{verb if result else 'applied'} {revision.rev}: {console.escape(revision.description)}")
        console.out.print(f"now at revision {migrate.status(url).current or 'base'}")
    except StoreError as exc:
        console.error(str(exc))
        raise typer.Exit(1) from None


def _status(current) -> int:
    console.out.print(f"current revision: {current.current or 'none (empty database)'}")
    console.out.print(f"newest revision:  {current.head}")
    if current.is_current:
        console.out.print("[green]up to date[/]")
        return 0
    console.out.print(f"pending ({len(current.pending)}):")
    for revision in current.pending:
        console.out.print(f"  {revision.rev}: {console.escape(revision.description)}")
    console.out.print("run `aana migrate` to apply them")
    return 1


def _spec_database_url(spec: Path) -> str | None:
    from runtime.spec import SpecError, load_spec

    try:
        return load_spec(spec).database.url
    except SpecError as exc:
        console.error(str(exc))
        raise typer.Exit(1) from None
