"""`aana keys` and `aana usage` as a person types them (SQLite): what goes to stdout and stderr, and exit codes."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, insert
from typer.testing import CliRunner

from aana_cli.main import app
from runtime.store import keys, migrate
from runtime.store.db import parse_url
from runtime.store.models import Request


@pytest.fixture
def runner():
    return CliRunner(env={"COLUMNS": "200"})


@pytest.fixture
def url(tmp_path):
    url = f"sqlite:///{tmp_path / 'aana.db'}"
    migrate.upgrade(url)
    return url


def aana(runner, url, *args):
    # --database-url goes after the subcommand, where each command declares it.
    return runner.invoke(app, [*args, "--database-url", url])


def test_create_prints_the_key_once_and_list_never_shows_it(runner, url):
    created = aana(runner, url, "keys", "create", "--name", "alice", "--models", "smollm2, minilm", "--rpm", "5")
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()
    assert re.fullmatch(r"aana-[a-z0-9]{8}_[A-Za-z0-9_-]{32}", secret)  # stdout holds the key alone
    assert "only time the key is shown" in created.stderr
    assert (
        "created key alice (" in created.stderr
        and "smollm2, minilm; 5 requests/min, no token limit; never expires" in created.stderr
    )

    [key] = keys.list_keys(url)
    listed = aana(runner, url, "keys", "list")
    as_json = aana(runner, url, "keys", "list", "--json")
    assert listed.exit_code == as_json.exit_code == 0
    for result in (listed, as_json):
        assert secret not in result.output and secret[13:] not in result.output and key.key_hash not in result.output
    assert re.search(
        rf"\nalice +{key.prefix} +smollm2, minilm +5 +- +\d{{4}}-\d\d-\d\d +never +active *\n", listed.stdout
    )
    [entry] = json.loads(as_json.stdout)
    assert {k: entry[k] for k in ("name", "prefix", "models", "rpm", "tpm", "expires_at", "state")} == {
        "name": "alice",
        "prefix": key.prefix,
        "models": ["smollm2", "minilm"],
        "rpm": 5,
        "tpm": None,
        "expires_at": None,
        "state": "active",
    }


def test_create_json_and_expiry(runner, url):
    before = datetime.now(timezone.utc)
    result = aana(runner, url, "keys", "create", "--name", "ci", "--expires", "12h", "--tpm", "1000", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert keys.key_prefix(body["key"]) == body["prefix"] and body["state"] == "active"
    expires = datetime.fromisoformat(body["expires_at"])
    assert before + timedelta(hours=12) <= expires <= datetime.now(timezone.utc) + timedelta(hours=12)
    assert "only time the key is shown" in result.stderr


def test_revoke_by_name_and_by_prefix(runner, url):
    aana(runner, url, "keys", "create", "--name", "alice")
    aana(runner, url, "keys", "create", "--name", "bob")
    alice, bob = keys.list_keys(url)

    by_name = aana(runner, url, "keys", "revoke", "alice")
    assert by_name.exit_code == 0 and by_name.stdout.startswith(f"revoked key alice ({alice.prefix})")
    by_prefix = aana(runner, url, "keys", "revoke", bob.prefix)
    assert by_prefix.exit_code == 0 and by_prefix.stdout.startswith(f"revoked key bob ({bob.prefix})")
    again = aana(runner, url, "keys", "revoke", "bob")
    assert again.exit_code == 0 and "was already revoked" in again.stdout
    assert [entry["state"] for entry in json.loads(aana(runner, url, "keys", "list", "--json").stdout)] == [
        "revoked",
        "revoked",
    ]


def test_domain_errors_exit_1_with_the_message(runner, url, tmp_path):
    aana(runner, url, "keys", "create", "--name", "alice")
    duplicate = aana(runner, url, "keys", "create", "--name", "alice")
    assert duplicate.exit_code == 1 and "a key named 'alice' exists already" in duplicate.stderr
    assert duplicate.stdout == ""
    unknown = aana(runner, url, "keys", "revoke", "carol")
    assert unknown.exit_code == 1 and "no key is named or prefixed 'carol'" in unknown.stderr
    assert aana(runner, url, "usage", "--key", "carol").exit_code == 1

    behind = f"sqlite:///{tmp_path / 'behind.db'}"
    migrate.upgrade(behind, to="0004")
    for args in (["keys", "list"], ["keys", "create", "--name", "x"], ["usage"]):
        result = aana(runner, behind, *args)
        assert result.exit_code == 1, args
        assert f"Run `aana migrate --database-url '{behind}'`" in result.stderr
        assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["keys", "create", "--name", "a", "--expires", "3x"],
        ["keys", "create", "--name", "a", "--expires", "0d"],
        ["keys", "create", "--name", "a", "--rpm", "0"],
        ["keys", "create", "--name", "a", "--models", " , "],
        ["keys", "create", "--name", " "],
        ["usage", "--since", "last week"],
        ["usage", "--since", "-7d"],
    ],
)
def test_bad_flags_exit_2_and_write_nothing(runner, url, args):
    result = aana(runner, url, *args)
    assert result.exit_code == 2, result.output
    assert "Invalid value" in result.stderr
    assert keys.list_keys(url) == []


def test_usage_totals_equal_the_rows_recorded(runner, url):
    alice, _ = keys.create_key(url, "alice")
    now = datetime.now(timezone.utc)
    rows = [
        dict(
            id=f"chatcmpl-{i}",
            model="smollm2" if i % 3 else "minilm",
            status_code=500 if i == 4 else 200,
            prompt_tokens=i,
            completion_tokens=2 * i,
            latency_ms=1.0,
            created_at=now - timedelta(hours=i),
            key_id=alice.id if i % 2 else None,
        )
        for i in range(1, 11)
    ]
    old = dict(rows[0], id="chatcmpl-old", created_at=now - timedelta(days=8))  # outside the default 7 days
    engine = create_engine(parse_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(insert(Request), [*rows, old])
    finally:
        engine.dispose()

    result = aana(runner, url, "usage", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["totals"] == {"requests": 10, "errors": 1, "prompt_tokens": 55, "completion_tokens": 110}
    assert sum(row["requests"] for row in body["rows"]) == 10
    assert {row["key"] for row in body["rows"]} == {"alice", "-"}

    only_alice = json.loads(aana(runner, url, "usage", "--json", "--key", "alice", "--since", "30d").stdout)
    assert only_alice["totals"]["requests"] == 6  # five in the week, one eight days ago

    table = aana(runner, url, "usage", "--model", "minilm")
    assert table.exit_code == 0
    assert re.search(r"\n total +3 +0 +18 +36 *\n", table.stdout), table.stdout
