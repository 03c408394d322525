"""Who is calling: API keys per person or service, checked at the edge without a database query.

A `KeyRing` holds the keys the database knows (refreshed every few seconds by the replica, `runtime.app`), looked up
by their prefix and compared by hash in constant time; the database keeps only the hash. `Authenticator` turns a
request's `Authorization: Bearer ...` into a `Caller`: a key's grant, or the spec's single `api_key` (every model, no
limits), or anyone when no authentication is on. Missing, wrong, revoked and expired keys are one 401, so a caller
learns nothing about which keys exist. Pure: no FastAPI, no database.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from runtime.key_format import hash_key, key_prefix
from runtime.openai.errors import APIError


@dataclass(frozen=True)
class KeyGrant:
    """One key as the ingress sees it (never the secret itself)."""

    id: str
    name: str
    prefix: str
    key_hash: str  # sha256 hex of the whole key
    models: tuple[str, ...] | None = None  # None: every model
    rpm: int | None = None
    tpm: int | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None

    def usable(self, now: datetime) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)

    @classmethod
    def of(cls, key: Any) -> KeyGrant:
        """From a stored key (`runtime.store.keys.ApiKey`, or anything with the same attributes)."""
        return cls(key.id, key.name, key.prefix, key.key_hash, key.models, key.rpm, key.tpm, key.expires_at,
                   key.revoked_at)  # fmt: skip


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: a key (`key_id`), or None for the spec's api_key or an open server."""

    key_id: str | None = None
    name: str | None = None
    models: tuple[str, ...] | None = None
    rpm: int | None = None
    tpm: int | None = None

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None


ANYONE = Caller()


class KeyRing:
    """The keys the database held at the last refresh. `known` is whether any key exists at all (revoked and
    expired ones included): with `[server] auth = "auto"`, that turns key checking on."""

    def __init__(self, keys: Iterable[KeyGrant] = (), loaded: bool = True):
        """`loaded` False: the keys are still to be read (a database that has not answered yet); until then the
        ring refuses everyone rather than let a server whose keys it cannot read run open."""
        self.replace(keys)
        self.loaded = loaded

    def replace(self, keys: Iterable[KeyGrant]) -> None:
        by_prefix = {key.prefix: key for key in keys}
        self._by_prefix = by_prefix  # one assignment: readers on other threads see the old or the new ring
        self.loaded = True

    @property
    def known(self) -> bool:
        return bool(self._by_prefix)

    def find(self, presented: str, now: datetime) -> KeyGrant | None:
        """The usable key `presented` is, or None."""
        prefix = key_prefix(presented)
        key = self._by_prefix.get(prefix) if prefix else None
        if key is None or not hmac.compare_digest(hash_key(presented), key.key_hash):
            return None
        return key if key.usable(now) else None


class Authenticator:
    """`Authorization: Bearer <key>` -> a Caller. `mode` "auto": keys are checked once any exist; "keys": always.
    The spec's `api_key` is accepted beside the keys."""

    def __init__(self, api_key: str | None, ring: KeyRing | None = None, mode: str = "auto"):
        self.api_key = api_key
        self.ring = ring or KeyRing()
        self.mode = mode

    @property
    def keys_on(self) -> bool:
        return self.mode == "keys" or self.ring.known

    @property
    def on(self) -> bool:
        return self.api_key is not None or self.keys_on

    def __call__(self, authorization: str) -> Caller:
        scheme, _, presented = authorization.partition(" ")
        presented = presented.strip() if scheme.lower() == "bearer" else ""
        if self.api_key is not None and hmac.compare_digest(presented.encode(), self.api_key.encode()):
            return ANYONE
        if not self.ring.loaded:  # fail closed: whether keys exist is not known yet
            raise APIError(503, "this server could not read its API keys from the database yet; retry shortly",
                           code="keys_unavailable", headers={"Retry-After": "2"})  # fmt: skip
        if not self.on:
            return ANYONE
        if self.keys_on and presented:
            key = self.ring.find(presented, datetime.now(timezone.utc))
            if key is not None:
                return Caller(key.id, key.name, key.models, key.rpm, key.tpm)
        raise APIError(401, "Incorrect API key provided; send `Authorization: Bearer <key>`", code="invalid_api_key")
