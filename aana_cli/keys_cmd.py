"""`aana keys create|list|revoke` and `aana usage`: API keys per person or service, and who used what.

The database is --database-url, else $AANA_DATABASE_URL, else the default SQLite file (as for `aana migrate`), and it
must be at the current schema. A new key goes to stdout alone (or in --json), everything else a person reads to
stderr, so `KEY=$(aana keys create --name ci)` keeps only the key.
Exit codes: 0 done; 1 the store said no (unknown or ambiguous key, name taken, database behind or unreachable);
2 a bad option (--expires, --since, --models).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import typer
from rich import box
from rich.table import Table

from aana_cli import console

if TYPE_CHECKING:
    from runtime.store.keys import ApiKey

_DURATION = re.compile(r"^\s*(\d+)\s*([dhm])\s*$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_duration(text: str, option: str) -> timedelta:
    """A duration such as 30d, 12h or 90m as a timedelta; anything else (or zero) is a usage error naming `option`."""
    match = _DURATION.match(text)
    if not match or int(match.group(1)) == 0:
        raise typer.BadParameter(
            f"{text!r} is not a duration; write a whole number of days, hours or minutes: 30d, 12h, 90m",
            param_hint=f"'{option}'",
        )
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_since(text: str, now: datetime) -> datetime:
    """A duration back from now ("7d", "12h") or a UTC date or time ("2025-06-01", "2025-06-01T12:00")."""
    if _DURATION.match(text):
        return now - parse_duration(text, "--since")
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise typer.BadParameter(
            f"{text!r} is neither a duration (7d, 12h, 90m) nor a date (2025-06-01)", param_hint="'--since'"
        ) from None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


def parse_models(text: str | None) -> list[str] | None:
    """The models of `--models a,b` as a list; None (the option left out) means every model."""
    if text is None:
        return None
    models = [m.strip() for m in text.split(",") if m.strip()]
    if not models:
        raise typer.BadParameter(
            "name at least one model (or leave --models out for every model)", param_hint="'--models'"
        )
    return models


def create(
    database_url: str | None,
    name: str,
    models: str | None,
    rpm: int | None,
    tpm: int | None,
    expires: str | None,
    as_json: bool,
) -> None:
    from runtime.store import keys

    if not name.strip():
        raise typer.BadParameter("a key needs a name", param_hint="'--name'")
    allowed = parse_models(models)
    now = datetime.now(timezone.utc)
    expires_at = now + parse_duration(expires, "--expires") if expires else None
    with _store_errors():
        key, secret = keys.create_key(_database(database_url), name, allowed, rpm, tpm, expires_at, now=now)
    if as_json:
        console.out.print_json(json.dumps({"key": secret, **_key_json(key, now)}))
    else:
        console.out.print(secret, markup=False, highlight=False, soft_wrap=True)
        console.err.print(
            f"created key {console.escape(key.name)} ({key.prefix}): {console.escape(_grant(key))}", soft_wrap=True
        )
    console.warning("this is the only time the key is shown; keep it now (the database keeps only its hash)")


def list_(database_url: str | None, as_json: bool) -> None:
    from runtime.store import keys

    with _store_errors():
        found = keys.list_keys(_database(database_url))
    now = datetime.now(timezone.utc)
    if as_json:
        console.out.print_json(json.dumps([_key_json(key, now) for key in found]))
        return
    if not found:
        console.out.print("no keys yet; `aana keys create --name NAME` makes one")
        return
    # Readable at 80 columns: no borders, dates as days, expiry as a distance; --json has the exact times.
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("name", "prefix", "models", "rpm", "tpm", "created", "expires", "state"):
        # Names and model lists may be long; a prefix broken over two lines is hard to copy.
        table.add_column(column, overflow="fold", no_wrap=column not in ("name", "models"))
    style = {"active": "green", "expired": "yellow", "revoked": "red"}
    for key in found:
        state = key.state(now)
        table.add_row(
            console.escape(key.name),
            key.prefix,
            console.escape(", ".join(key.models)) if key.models is not None else "every model",
            _limit(key.rpm),
            _limit(key.tpm),
            key.created_at.date().isoformat(),
            _distance(key.expires_at, now) if key.expires_at else "never",
            f"[{style[state]}]{state}[/]",
        )
    console.out.print(table)


def revoke(database_url: str | None, name_or_prefix: str) -> None:
    from runtime.store import keys

    with _store_errors():
        url = _database(database_url)
        before = keys.find_key(url, name_or_prefix)
        key = keys.revoke_key(url, before.prefix)
    label = f"key {console.escape(key.name)} ({key.prefix})"
    if before.revoked_at is not None:
        console.out.print(f"{label} was already revoked at {_when(before.revoked_at)} UTC", soft_wrap=True)
    else:
        console.out.print(f"revoked {label}; every server stops accepting it within a few seconds", soft_wrap=True)


def usage(database_url: str | None, since: str, key: str | None, model: str | None, as_json: bool) -> None:
    from runtime.store.usage import usage as usage_rows

    now = datetime.now(timezone.utc)
    start = parse_since(since, now)
    with _store_errors():
        rows = usage_rows(_database(database_url), start, key=key, model=model)
    totals = {
        field: sum(getattr(row, field) for row in rows)
        for field in ("requests", "errors", "prompt_tokens", "completion_tokens")
    }
    if as_json:
        body = {
            "since": start.isoformat(),
            "rows": [{**row.__dict__, "day": row.day.isoformat()} for row in rows],
            "totals": totals,
        }
        console.out.print_json(json.dumps(body))
        return
    if not rows:
        console.out.print(f"no requests since {_when(start)} UTC")
        return
    console.out.print(
        f"usage since {_when(start)} UTC per key, model and UTC day: requests, errors (status >= 400 except 499, "
        "the client left), prompt and completion tokens",
        soft_wrap=True,
    )
    table = Table(box=box.SIMPLE, pad_edge=False, header_style="bold", show_footer=True)
    headers = dict(zip(totals, ("requests", "errors", "prompt", "completion"), strict=True))
    table.add_column("key", footer="total", overflow="fold", min_width=8)
    table.add_column("model", overflow="fold", min_width=8)
    table.add_column("day", no_wrap=True)
    for field, header in headers.items():
        table.add_column(header, footer=f"{totals[field]:,}", justify="right", no_wrap=True)
    for row in rows:
        table.add_row(
            console.escape(row.key),
            console.escape(row.model),
            row.day.isoformat(),
            *(f"{value:,}" for value in (row.requests, row.errors, row.prompt_tokens, row.completion_tokens)),
        )
    console.out.print(table)


def _database(database_url: str | None) -> str:
    """The URL to use, checked to be at the current schema (else the `aana migrate` that fixes it)."""
    from runtime.store import migrate

    url, source = migrate.resolve_database_url(database_url, None)
    console.err.print(f"database: {console.escape(migrate.mask_url(url))} (from {source})")
    migrate.require_current(url, migrate.migrate_command(url, source))
    return url


@contextmanager
def _store_errors() -> Iterator[None]:
    from runtime.store.errors import StoreError

    try:
        yield
    except StoreError as exc:
        console.error(str(exc))
        raise typer.Exit(1) from None


def _key_json(key: ApiKey, now: datetime) -> dict:
    return {
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "models": list(key.models) if key.models is not None else None,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "created_at": key.created_at.isoformat(),
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
        "state": key.state(now),
    }


def _grant(key: ApiKey) -> str:
    models = ", ".join(key.models) if key.models is not None else "every model"
    limits = ", ".join(
        f"{value:,} {unit}s/min" if value is not None else f"no {unit} limit"
        for value, unit in ((key.rpm, "request"), (key.tpm, "token"))
    )
    expires = f"expires {_when(key.expires_at)} UTC" if key.expires_at else "never expires"
    return f"{models}; {limits}; {expires}"


def _limit(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _distance(moment: datetime, now: datetime) -> str:
    """`in 29d`, `in 11h`, `in 45m`, or `3d ago`: the largest whole unit."""
    seconds = (moment - now).total_seconds()
    span = abs(seconds)
    amount = (
        f"{span // 86400:.0f}d" if span >= 86400 else f"{span // 3600:.0f}h" if span >= 3600 else f"{span // 60:.0f}m"
    )
    return f"in {amount}" if seconds >= 0 else f"{amount} ago"


def _when(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
