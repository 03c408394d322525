"""The migrations on SQLite and PostgreSQL: from empty to head, down and up, across data, and against the models."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import column, create_engine, insert, inspect, select, table, text

from runtime.store import keys, migrate, stored
from runtime.store.db import parse_url
from runtime.store.errors import SchemaError, StoreError
from runtime.store.migrate import Revision
from runtime.store.models import Base, Request, Run
from runtime.store.stored import StoredCompletion

ALL = [
    Revision("0001", "Create deployments"),
    Revision("0002", "Create requests"),
    Revision("0003", "Add requests.stream and a per-deployment index"),
    Revision("0004", "Rename deployments to runs"),
    Revision("0005", "Add API keys, requests.key_id and stored completions"),
]
HEAD_TABLES = {"alembic_version", "runs", "requests", "api_keys", "stored_completions"}


def engine_for(url):
    return create_engine(parse_url(url))


def tables(url) -> set[str]:
    engine = engine_for(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def version_rows(url) -> list[str]:
    engine = engine_for(url)
    try:
        with engine.connect() as conn:
            return list(conn.scalars(text("SELECT version_num FROM alembic_version")))
    finally:
        engine.dispose()


def test_revisions_are_linear_and_named_by_intent():
    assert migrate.revisions() == ALL


def test_upgrade_from_empty_to_head(database_url):
    assert migrate.upgrade(database_url) == ALL

    assert tables(database_url) == HEAD_TABLES
    assert version_rows(database_url) == ["0005"]
    assert migrate.upgrade(database_url) == []


def test_down_to_base_and_up_again(database_url):
    migrate.upgrade(database_url)

    down = migrate.migrate_to(database_url, "base")
    assert (down.direction, down.revisions, down.current) == ("down", list(reversed(ALL)), None)
    assert tables(database_url) == {"alembic_version"}
    assert version_rows(database_url) == []

    up = migrate.migrate_to(database_url, "head")
    assert (up.direction, up.revisions, up.current) == ("up", ALL, "0005")
    assert tables(database_url) == HEAD_TABLES


def test_rows_written_at_head_survive_a_round_trip_to_0002(database_url):
    migrate.upgrade(database_url)
    created = datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    rows = [
        dict(
            id=f"chatcmpl-{i}",
            run_id="d1",
            model="smollm2",
            status_code=200 if i % 2 else 500,
            finish_reason="stop",
            prompt_tokens=10 + i,
            completion_tokens=20 + i,
            ttft_ms=1.5 * i,
            latency_ms=10.0 * i,
            stream=True,
            created_at=created,
            key_id=f"key-{i}" if i % 2 else None,
        )
        for i in range(5)
    ]
    engine = engine_for(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(Request), rows)

        assert migrate.migrate_to(database_url, "0002").revisions == [ALL[4], ALL[3], ALL[2]]
        assert {"stream", "key_id"}.isdisjoint(c["name"] for c in inspect(engine).get_columns("requests"))
        assert migrate.migrate_to(database_url, "head").revisions == [ALL[2], ALL[3], ALL[4]]

        with engine.connect() as conn:
            back = [row._asdict() for row in conn.execute(select(Request.__table__).order_by(Request.id))]
    finally:
        engine.dispose()
    # Everything survives; what 0002 cannot hold comes back as the column's default: not streamed, no key.
    assert back == [{**row, "stream": False, "key_id": None} for row in rows]


# The tables as 0003 and 0004 name them, typed like the models so timestamps read back the same on both databases.
REQUESTS_BEFORE_KEYS = [c for c in Request.__table__.columns if c.name != "key_id"]
OLD_RUNS = table("deployments", *(column(c.name, c.type) for c in Run.__table__.columns))
OLD_REQUESTS = table(
    "requests", *(column("deployment_id" if c.name == "run_id" else c.name, c.type) for c in REQUESTS_BEFORE_KEYS)
)
REQUESTS_0004 = table("requests", *(column(c.name, c.type) for c in REQUESTS_BEFORE_KEYS))


def schema_names(engine, runs_table: str) -> tuple[str | None, dict[str, list[str]]]:
    """The runs table's primary key name and the requests indexes (name -> columns)."""
    inspector = inspect(engine)
    indexes = {ix["name"]: ix["column_names"] for ix in inspector.get_indexes("requests")}
    return inspector.get_pk_constraint(runs_table)["name"], indexes


def test_0004_renames_deployments_to_runs_keeping_the_data(database_url):
    migrate.upgrade(database_url, to="0003")
    started = datetime(2025, 3, 4, 5, 6, 7, tzinfo=timezone.utc)
    run = dict(
        id="5f0c6a52-3d7e-4c1b-9a43-0d2b6f1e8a90",
        app_name="demo",
        spec_text='name = "demo"\n',
        spec_hash="ab" * 32,
        ray_address="ray://head:10001",
        base_url="http://127.0.0.1:8000/v1",
        started_at=started,
        stopped_at=started + timedelta(hours=2),
        state="stopped",
        error=None,
    )
    requests = [
        dict(
            id=f"chatcmpl-{i}",
            # One request served while the run's row could not be written: it keeps no run id.
            deployment_id=None if i == 3 else run["id"],
            model="smollm2",
            status_code=200 if i else 500,
            finish_reason="stop",
            prompt_tokens=10 + i,
            completion_tokens=20 + i,
            ttft_ms=1.5 * i,
            latency_ms=10.0 * i,
            stream=i % 2 == 0,
            created_at=started + timedelta(seconds=i),
        )
        for i in range(4)
    ]
    renamed = [{("run_id" if key == "deployment_id" else key): value for key, value in row.items()} for row in requests]
    sqlite = database_url.startswith("sqlite")
    engine = engine_for(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(OLD_RUNS), [run])
            conn.execute(insert(OLD_REQUESTS), requests)

        assert migrate.upgrade(database_url, to="0004") == [ALL[3]]
        assert tables(database_url) == {"alembic_version", "runs", "requests"}
        with engine.connect() as conn:
            assert [row._asdict() for row in conn.execute(select(Run.__table__))] == [run]
            assert [
                row._asdict() for row in conn.execute(select(REQUESTS_0004).order_by(REQUESTS_0004.c.id))
            ] == renamed
        # SQLite cannot rename a constraint: the primary key keeps its old name inside the table definition.
        assert schema_names(engine, "runs") == (
            "pk_deployments" if sqlite else "pk_runs",
            {"ix_requests_created_at": ["created_at"], "ix_requests_run_id_created_at": ["run_id", "created_at"]},
        )

        down = migrate.migrate_to(database_url, "0003")
        assert (down.direction, down.revisions) == ("down", [ALL[3]])
        assert tables(database_url) == {"alembic_version", "deployments", "requests"}
        with engine.connect() as conn:
            assert [row._asdict() for row in conn.execute(select(OLD_RUNS))] == [run]
            assert [row._asdict() for row in conn.execute(select(OLD_REQUESTS).order_by(OLD_REQUESTS.c.id))] == requests
        assert schema_names(engine, "deployments") == (
            "pk_deployments",
            {
                "ix_requests_created_at": ["created_at"],
                "ix_requests_deployment_id_created_at": ["deployment_id", "created_at"],
            },
        )
    finally:
        engine.dispose()


def test_0005_adds_keys_and_stored_completions_keeping_every_request(database_url):
    migrate.upgrade(database_url, to="0004")
    created = datetime(2025, 5, 6, 7, 8, 9, tzinfo=timezone.utc)
    requests = [
        dict(
            id=f"chatcmpl-{i}",
            run_id="5f0c6a52-3d7e-4c1b-9a43-0d2b6f1e8a90",
            model="smollm2",
            status_code=200 if i else 429,
            finish_reason="stop",
            prompt_tokens=10 + i,
            completion_tokens=20 + i,
            ttft_ms=1.5 * i,
            latency_ms=10.0 * i,
            stream=i % 2 == 0,
            created_at=created + timedelta(seconds=i),
        )
        for i in range(3)
    ]
    engine = engine_for(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(insert(REQUESTS_0004), requests)

        assert migrate.upgrade(database_url) == [ALL[4]]
        assert tables(database_url) == HEAD_TABLES
        with engine.connect() as conn:
            at_head = [row._asdict() for row in conn.execute(select(Request.__table__).order_by(Request.id))]
        assert at_head == [{**row, "key_id": None} for row in requests]  # made before keys: no key
        assert schema_names(engine, "runs")[1] == {
            "ix_requests_created_at": ["created_at"],
            "ix_requests_run_id_created_at": ["run_id", "created_at"],
            "ix_requests_key_id_created_at": ["key_id", "created_at"],
        }

        # Written at 0005: a key, a request it made, a completion it stored.
        key, _ = keys.create_key(database_url, "alice", now=created)
        with engine.begin() as conn:
            conn.execute(insert(Request), [{**requests[0], "id": "chatcmpl-k", "key_id": key.id}])
        completion = StoredCompletion("chatcmpl-k", key.id, "smollm2", created, {}, {"messages": []}, {"id": "x"})
        stored.save_completion(database_url, completion)

        down = migrate.migrate_to(database_url, "0004")
        assert (down.direction, down.revisions) == ("down", [ALL[4]])
        assert tables(database_url) == {"alembic_version", "runs", "requests"}
        with engine.connect() as conn:
            at_0004 = [row._asdict() for row in conn.execute(select(REQUESTS_0004).order_by(REQUESTS_0004.c.id))]
        assert at_0004 == [*requests, {**requests[0], "id": "chatcmpl-k"}]

        assert migrate.upgrade(database_url) == [ALL[4]]
        assert keys.list_keys(database_url) == []
        with engine.connect() as conn:
            assert list(conn.scalars(select(Request.key_id))) == [None] * 4
    finally:
        engine.dispose()


def test_models_match_the_migrated_schema(database_url):
    migrate.upgrade(database_url)
    engine = engine_for(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_status_pending_then_current(database_url):
    before = migrate.status(database_url)
    assert (before.current, before.head, before.applied, before.pending) == (None, "0005", [], ALL)
    assert not before.is_current

    migrate.upgrade(database_url, to="0001")
    middle = migrate.status(database_url)
    assert (middle.current, middle.applied, middle.pending) == ("0001", ALL[:1], ALL[1:])

    migrate.upgrade(database_url)
    after = migrate.status(database_url)
    assert (after.current, after.applied, after.pending, after.is_current) == ("0005", ALL, [], True)


def test_require_current_names_the_command(database_url):
    migrate.upgrade(database_url, to="0002")
    with pytest.raises(SchemaError) as raised:
        migrate.require_current(database_url, command="aana migrate --database-url URL")
    message = str(raised.value)
    assert "is at revision 0002" in message
    assert "0003 (Add requests.stream and a per-deployment index)" in message
    assert message.endswith("Run `aana migrate --database-url URL`")

    migrate.upgrade(database_url)
    assert migrate.require_current(database_url).is_current


def test_require_current_on_an_empty_database(database_url):
    expected = r"has no aana tables yet \(5 migrations pending: 0001 .*\)\. Run `aana migrate`$"
    with pytest.raises(SchemaError, match=expected):
        migrate.require_current(database_url)


def test_a_database_newer_than_the_code(database_url):
    migrate.upgrade(database_url)
    engine = engine_for(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    finally:
        engine.dispose()
    expected = (
        r"the database at .* is at revision 0099, which this version of aana does not know \(its newest is 0005\); "
        r"upgrade aana or point at another database"
    )
    for call in (migrate.status, migrate.upgrade, migrate.require_current, lambda url: migrate.migrate_to(url, "0001")):
        with pytest.raises(SchemaError, match=expected):
            call(database_url)


def test_an_unknown_target_lists_the_valid_revisions(database_url):
    with pytest.raises(StoreError) as raised:
        migrate.migrate_to(database_url, "0042")
    assert str(raised.value) == (
        "unknown revision '0042'; valid revisions: base, 0001 (Create deployments), 0002 (Create requests), "
        "0003 (Add requests.stream and a per-deployment index), 0004 (Rename deployments to runs), "
        "0005 (Add API keys, requests.key_id and stored completions), head"
    )
    assert tables(database_url) == set()


def test_upgrade_refuses_to_go_down(database_url):
    migrate.upgrade(database_url)
    with pytest.raises(StoreError, match=r"is at revision 0005, past 0001; going down is `aana migrate --to 0001`"):
        migrate.upgrade(database_url, to="0001")
    assert version_rows(database_url) == ["0005"]


def test_migrate_to_the_current_revision_does_nothing(database_url):
    migrate.upgrade(database_url, to="0002")
    assert migrate.migrate_to(database_url, "0002") == migrate.MigrationResult("none", [], "0002")


@pytest.mark.parametrize(
    "url, create",
    [
        ("sqlite:///unused.db", "CREATE TABLE deployments"),
        ("postgresql://u:pw@db.invalid/aana", "CREATE TABLE requests"),
    ],
)
def test_sql_writes_the_upgrade_without_a_server(url, create):
    text_ = migrate.sql(url)
    assert create in text_
    assert "ALTER TABLE requests ADD COLUMN stream BOOLEAN" in text_
    assert text_.rstrip().endswith("COMMIT;")
    assert "ALTER TABLE deployments RENAME TO runs" in text_
    assert "CREATE TABLE api_keys" in text_ and "ALTER TABLE requests ADD COLUMN key_id VARCHAR(36)" in text_
    assert "CREATE TABLE stored_completions" in text_
    assert "UPDATE alembic_version SET version_num='0005'" in text_


def test_sql_for_a_range_and_for_going_down():
    assert "CREATE TABLE" not in migrate.sql("sqlite://", to="0004", start="0002")
    assert "ADD COLUMN stream" in migrate.sql("sqlite://", to="0004", start="0002")
    assert "CREATE TABLE deployments" not in migrate.sql("sqlite://", to="head", start="0002")
    down = migrate.sql("postgresql://u:pw@db.invalid/aana", to="base")
    assert "DROP TABLE requests" in down and "DROP TABLE deployments" in down
    assert "DROP TABLE api_keys" in down and "ALTER TABLE requests DROP COLUMN key_id" in down


def run_script(url: str, script: str) -> None:
    """Run SQL as a person would paste it into the database's shell."""
    engine = engine_for(url)
    try:
        raw = engine.raw_connection()
        try:
            cursor = raw.cursor()
            if engine.dialect.name == "sqlite":
                cursor.executescript(script)
            else:
                cursor.execute(script)
            raw.commit()
        finally:
            raw.close()
    finally:
        engine.dispose()


def test_the_sql_runs(database_url):
    """What `--sql` prints is what a person would run by hand: it must build the same schema."""
    run_script(database_url, migrate.sql(database_url))
    assert migrate.status(database_url).is_current
    assert tables(database_url) == HEAD_TABLES


def test_the_sql_for_going_down_runs(database_url):
    migrate.upgrade(database_url)
    run_script(database_url, migrate.sql(database_url, to="0003", start="head"))
    assert migrate.status(database_url).current == "0003"
    assert tables(database_url) == {"alembic_version", "deployments", "requests"}


def test_migrate_command_matches_where_the_url_came_from():
    url = "postgresql://aana:s3cret@db:5432/aana"
    assert migrate.migrate_command(url, "--database-url") == (
        "aana migrate --database-url 'postgresql://aana:***@db:5432/aana'"
    )
    assert migrate.migrate_command(url, "AANA_DATABASE_URL") == "aana migrate"
    from_spec = migrate.migrate_command(url, "spec database.url", spec_path="specs/app.toml")
    assert from_spec == "aana migrate --spec specs/app.toml"
    assert migrate.migrate_command(url, "default") == "aana migrate"


def test_the_store_imports_no_server_or_cli_library():
    code = (
        "import sys, runtime.store.migrate, runtime.store.recorder, runtime.store.runs, runtime.store.keys, "
        "runtime.store.usage, runtime.store.stored; "
        "print(sorted(m for m in ('ray', 'fastapi', 'typer', 'rich', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
