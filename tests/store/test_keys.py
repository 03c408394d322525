"""API keys on SQLite and PostgreSQL: shown once, kept as a hash, listed, revoked, and what the ingress caches."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, select

from runtime.store import keys, migrate
from runtime.store.db import parse_url
from runtime.store.errors import StoreError
from runtime.store.keys import AmbiguousKey, ApiKey, DuplicateKeyName, KeyNotFound
from runtime.store.models import ApiKeyRow

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
KEY_SHAPE = re.compile(r"^aana-[a-z0-9]{8}_[A-Za-z0-9_-]{32}$")


@pytest.fixture
def url(database_url):
    migrate.upgrade(database_url)
    return database_url


def stored_rows(url) -> list[dict]:
    engine = create_engine(parse_url(url))
    try:
        with engine.connect() as conn:
            return [row._asdict() for row in conn.execute(select(ApiKeyRow.__table__))]
    finally:
        engine.dispose()


def test_a_key_is_shown_once_and_the_database_keeps_only_its_hash_and_prefix(url):
    key, secret = keys.create_key(url, "alice", now=T0)

    assert KEY_SHAPE.match(secret)
    assert key.prefix == secret[:13] == keys.key_prefix(secret)
    assert key.key_hash == keys.hash_key(secret) and len(key.key_hash) == 64
    assert key.matches(secret) and not key.matches(secret[:-1] + ("A" if secret[-1] != "A" else "B"))
    [row] = stored_rows(url)
    assert not any(secret[13:] in str(value) for value in row.values())
    assert row["prefix"] == key.prefix and row["key_hash"] == key.key_hash
    assert keys.list_keys(url) == [key]
    assert key == ApiKey(key.id, "alice", key.prefix, key.key_hash, None, None, None, T0, None, None)


def test_two_keys_never_share_a_prefix_or_a_secret(url):
    made = [keys.create_key(url, f"k{i}") for i in range(20)]
    assert len({key.prefix for key, _ in made}) == 20 and len({secret for _, secret in made}) == 20


def test_models_limits_and_expiry_are_kept(url):
    expires = T0 + timedelta(days=30)
    key, _ = keys.create_key(
        url, " ci ", models=["smollm2", " minilm "], rpm=60, tpm=10_000, expires_at=expires, now=T0
    )

    assert (key.name, key.models, key.rpm, key.tpm, key.expires_at) == (
        "ci",
        ("smollm2", "minilm"),
        60,
        10_000,
        expires,
    )
    assert keys.list_keys(url) == [key]
    assert key.allows("smollm2") and not key.allows("llama")
    assert keys.create_key(url, "everything")[0].allows("llama")


def test_a_name_is_taken_for_good(url):
    keys.create_key(url, "alice")
    with pytest.raises(DuplicateKeyName, match=r"a key named 'alice' exists already .*choose another name"):
        keys.create_key(url, "alice")
    keys.revoke_key(url, "alice")
    with pytest.raises(DuplicateKeyName):
        keys.create_key(url, "alice")
    assert [key.name for key in keys.list_keys(url)] == ["alice"]


def test_revoke_by_name_prefix_bare_prefix_or_the_key_itself(url):
    made = {name: keys.create_key(url, name) for name in ("a", "b", "c", "d")}
    by = {
        "a": "a",
        "b": made["b"][0].prefix,
        "c": made["c"][0].prefix.removeprefix("aana-"),
        "d": made["d"][1],
    }
    for name, handle in by.items():
        revoked = keys.revoke_key(url, handle, now=T0)
        assert (revoked.name, revoked.revoked_at) == (name, T0)
    assert keys.usable_keys(url) == []


def test_revoking_twice_keeps_the_first_time(url):
    keys.create_key(url, "alice")
    first = keys.revoke_key(url, "alice", now=T0)
    again = keys.revoke_key(url, "alice", now=T0 + timedelta(hours=1))
    assert first.revoked_at == again.revoked_at == T0


def test_an_unknown_or_ambiguous_key_is_a_store_error_naming_the_fix(url):
    other, _ = keys.create_key(url, "alice")
    with pytest.raises(KeyNotFound, match=r"no key is named or prefixed 'bob' .*`aana keys list` shows them"):
        keys.revoke_key(url, "bob")
    keys.create_key(url, other.prefix)  # a name that is another key's prefix
    with pytest.raises(AmbiguousKey, match=r"names more than one key: .*; name one by its prefix") as raised:
        keys.revoke_key(url, other.prefix)
    assert isinstance(raised.value, StoreError)
    assert keys.usable_keys(url) != []  # nothing was revoked


def test_usable_keys_leave_out_revoked_and_expired_ones(url):
    now = datetime.now(timezone.utc)
    active, _ = keys.create_key(url, "active")
    later, _ = keys.create_key(url, "expires-later", expires_at=now + timedelta(hours=1))
    expired, _ = keys.create_key(url, "expired", expires_at=now - timedelta(seconds=1))
    revoked, _ = keys.create_key(url, "revoked")
    revoked = keys.revoke_key(url, "revoked")

    assert [key.name for key in keys.usable_keys(url)] == ["active", "expires-later"]
    assert [key.name for key in keys.usable_keys(url, now=now + timedelta(hours=2))] == ["active"]
    assert [k.state(now) for k in (active, later, expired, revoked)] == ["active", "active", "expired", "revoked"]
    assert not expired.usable(now) and later.usable(now) and not later.usable(now + timedelta(hours=1))
    assert [key.name for key in keys.list_keys(url)] == ["active", "expires-later", "expired", "revoked"]


@pytest.mark.parametrize(
    "text",
    ["", "sk-abcdef", "aana-abcdefgh", "aana-abcdefgh_", "aana-ABCDEFGH_xyz", "aana-abc_defgh_xyz", "aana-abcdefghxyz"],
)
def test_key_prefix_of_something_not_ours(text):
    assert keys.key_prefix(text) is None


def test_bad_arguments_are_value_errors():
    for call in (
        lambda: keys.create_key("sqlite://", " "),
        lambda: keys.create_key("sqlite://", "a", models=[" "]),
        lambda: keys.create_key("sqlite://", "a", rpm=0),
    ):
        with pytest.raises(ValueError):
            call()


def test_no_url_means_the_default_database(monkeypatch, tmp_path):
    url = f"sqlite:///{tmp_path / 'default.db'}"
    migrate.upgrade(url)
    monkeypatch.setenv("AANA_DATABASE_URL", url)
    key, _ = keys.create_key(None, "alice")
    assert keys.list_keys(url) == keys.list_keys(None) == [key]
