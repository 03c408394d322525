"""API keys: making one (shown once), listing, revoking, and the usable ones the ingress caches.

A key reads `aana-` + 8 lowercase letters or digits (its prefix, what a key is listed, revoked and looked up by) +
`_` + 32 URL-safe characters from `secrets` (192 bits). The database keeps the prefix and the sha256 of the whole
key, never the key: 192 random bits need no slow hash to resist guessing, and sha256 keeps the check per request
cheap. A name is unique, revoked keys included, so usage per name never mixes two keys.
"""

from __future__ import annotations

import hmac
import json
import secrets
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone

from sqlalchemy import exc, or_, select, update

from runtime.key_format import KEY_PREFIX, PREFIX_ALPHABET, PREFIX_LENGTH, SEPARATOR, hash_key, key_prefix
from runtime.store.db import mask_url
from runtime.store.errors import StoreError
from runtime.store.models import ApiKeyRow, as_utc
from runtime.store.sessions import database_url, session


class KeyNotFound(StoreError):
    """No key has this name or prefix."""


class AmbiguousKey(StoreError):
    """A name or prefix that names more than one key."""


class DuplicateKeyName(StoreError):
    """A key with this name exists already (perhaps revoked)."""


@dataclass(frozen=True)
class ApiKey:
    """One key as the database keeps it: never the secret, only its hash and prefix."""

    id: str
    name: str
    prefix: str
    key_hash: str  # sha256 hex of the whole key
    models: tuple[str, ...] | None  # None: every model
    rpm: int | None  # requests per minute; None: no limit
    tpm: int | None  # tokens per minute; None: no limit
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None

    def allows(self, model: str) -> bool:
        return self.models is None or model in self.models

    def usable(self, now: datetime) -> bool:
        """Not revoked and not expired at `now`."""
        return self.revoked_at is None and (self.expires_at is None or as_utc(now) < self.expires_at)

    def state(self, now: datetime) -> str:
        """The state at `now`: revoked, expired or active (revoked wins: it was a person's decision)."""
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.usable(now) else "expired"

    def matches(self, secret: str) -> bool:
        """Whether `secret` is this key, compared in constant time."""
        return hmac.compare_digest(hash_key(secret), self.key_hash)


def create_key(
    url: str | None,
    name: str,
    models: Sequence[str] | None = None,
    rpm: int | None = None,
    tpm: int | None = None,
    expires_at: datetime | None = None,
    *,
    now: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Make a key; return its record and the key itself, which exists nowhere else from now on.

    models None: every model. Raises `DuplicateKeyName` when `name` is taken, ValueError for an empty name or model
    list or a limit below 1 (the CLI checks these first).
    """
    name = name.strip()
    if not name:
        raise ValueError("a key needs a name")
    if models is not None and not [m for m in models if m.strip()]:
        raise ValueError("models: name at least one model, or None for every model")
    for label, limit in (("rpm", rpm), ("tpm", tpm)):
        if limit is not None and limit < 1:
            raise ValueError(f"{label} must be at least 1, not {limit}")
    url = database_url(url)
    row = ApiKeyRow(
        id=str(uuid.uuid4()),
        name=name,
        models=None if models is None else json.dumps([m.strip() for m in models if m.strip()]),
        rpm=rpm,
        tpm=tpm,
        created_at=now or datetime.now(timezone.utc),
        expires_at=None if expires_at is None else as_utc(expires_at),
        revoked_at=None,
    )
    try:
        with session(url, "write to") as db:
            if db.scalar(select(ApiKeyRow.id).where(ApiKeyRow.name == name)) is not None:
                raise _duplicate(url, name)
            prefix = _new_prefix()
            while db.scalar(select(ApiKeyRow.id).where(ApiKeyRow.prefix == prefix)) is not None:
                prefix = _new_prefix()  # 36^8 prefixes: a repeat is rare, and would make lookups ambiguous
            secret = f"{prefix}{SEPARATOR}{secrets.token_urlsafe(24)}"
            row.prefix, row.key_hash = prefix, hash_key(secret)
            db.add(row)
    except StoreError as error:
        # Another `aana keys create` took the name between the check and the insert.
        if isinstance(error.__cause__, exc.IntegrityError) and _name_taken(url, name):
            raise _duplicate(url, name) from None
        raise
    return _key(row), secret


def list_keys(url: str | None) -> list[ApiKey]:
    """Every key, revoked and expired ones included, oldest first."""
    with session(url, "read") as db:
        return [_key(row) for row in db.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at, ApiKeyRow.name))]


def usable_keys(url: str | None, now: datetime | None = None) -> list[ApiKey]:
    """The keys neither revoked nor expired at `now` (default: now): what the ingress caches."""
    now = as_utc(now or datetime.now(timezone.utc))
    query = select(ApiKeyRow).where(
        ApiKeyRow.revoked_at.is_(None), or_(ApiKeyRow.expires_at.is_(None), ApiKeyRow.expires_at > now)
    )
    with session(url, "read") as db:
        return [_key(row) for row in db.scalars(query.order_by(ApiKeyRow.created_at, ApiKeyRow.name))]


def find_key(url: str | None, name_or_prefix: str) -> ApiKey:
    """The key with this name or prefix (with or without "aana-"; a whole key names its own prefix).

    Raises `KeyNotFound`, or `AmbiguousKey` when it is one key's name and another's prefix.
    """
    with session(url, "read") as db:
        return _key(_find(db, database_url(url), name_or_prefix))


def revoke_key(url: str | None, name_or_prefix: str, *, now: datetime | None = None) -> ApiKey:
    """Revoke a key by name or prefix (see `find_key`) and return it; a revoked key stays revoked as it was."""
    url = database_url(url)
    with session(url, "write to") as db:
        row = _find(db, url, name_or_prefix)
        if row.revoked_at is None:
            # Only the first revocation counts, even when two run at once.
            db.execute(
                update(ApiKeyRow)
                .where(ApiKeyRow.id == row.id, ApiKeyRow.revoked_at.is_(None))
                .values(revoked_at=as_utc(now or datetime.now(timezone.utc)))
            )
            db.refresh(row)
        return _key(row)


def _find(db, url: str, name_or_prefix: str) -> ApiKeyRow:
    text = name_or_prefix.strip()
    prefixes = {key_prefix(text) or text}
    if not text.startswith(KEY_PREFIX):
        prefixes.add(KEY_PREFIX + text)
    rows = list(db.scalars(select(ApiKeyRow).where(or_(ApiKeyRow.name == text, ApiKeyRow.prefix.in_(prefixes)))))
    if not rows:
        raise KeyNotFound(
            f"no key is named or prefixed {text!r} in the database at {mask_url(url)}; `aana keys list` shows them"
        )
    if len(rows) > 1:
        which = ", ".join(f"{row.name} ({row.prefix})" for row in rows)
        raise AmbiguousKey(f"{text!r} names more than one key: {which}; name one by its prefix")
    return rows[0]


def _key(row: ApiKeyRow) -> ApiKey:
    return ApiKey(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        key_hash=row.key_hash,
        models=None if row.models is None else tuple(json.loads(row.models)),
        rpm=row.rpm,
        tpm=row.tpm,
        created_at=as_utc(row.created_at),
        expires_at=None if row.expires_at is None else as_utc(row.expires_at),
        revoked_at=None if row.revoked_at is None else as_utc(row.revoked_at),
    )


def _new_prefix() -> str:
    return KEY_PREFIX + "".join(secrets.choice(PREFIX_ALPHABET) for _ in range(PREFIX_LENGTH - len(KEY_PREFIX)))


def _name_taken(url: str, name: str) -> bool:
    with session(url, "read") as db:
        return db.scalar(select(ApiKeyRow.id).where(ApiKeyRow.name == name)) is not None


def _duplicate(url: str, name: str) -> DuplicateKeyName:
    return DuplicateKeyName(
        f"a key named {name!r} exists already in the database at {mask_url(url)} (names stay taken after "
        "revocation, so usage never mixes two keys); choose another name"
    )
