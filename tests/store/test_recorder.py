"""The request recorder on SQLite and PostgreSQL: batched writes, and no row lost to a database outage."""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta, timezone

from pg import create_database, drop_database
from sqlalchemy import create_engine, event, select

from runtime.records import CompletionRecord
from runtime.store import migrate
from runtime.store.db import parse_url
from runtime.store.models import Request
from runtime.store.recorder import RequestRecorder

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)


def record(i: int, **overrides) -> CompletionRecord:
    values = dict(
        id=f"chatcmpl-{i:05d}",
        model="smollm2",
        status_code=200,
        latency_ms=100.0 + i,
        prompt_tokens=5,
        completion_tokens=7,
        finish_reason="stop",
        ttft_ms=10.0,
        stream=i % 2 == 0,
        created_at=T0 + timedelta(seconds=i),
    )
    values.update(overrides)
    return CompletionRecord(**values)


def stored(url) -> list[dict]:
    engine = create_engine(parse_url(url))
    try:
        with engine.connect() as conn:
            return [row._asdict() for row in conn.execute(select(Request.__table__).order_by(Request.id))]
    finally:
        engine.dispose()


def stored_ids(url) -> list[str]:
    return [row["id"] for row in stored(url)]


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def insert_sizes(recorder: RequestRecorder) -> list[int]:
    """Rows per INSERT statement the recorder sends (each row binds 12 parameters)."""
    sizes: list[int] = []

    @event.listens_for(recorder._engine, "before_cursor_execute")
    def count(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("INSERT"):
            # One statement whose VALUES list holds every row: 12 flat parameters per row, not a list of rows.
            assert isinstance(parameters, dict) or not isinstance(parameters[0], (tuple, list, dict))
            sizes.append(len(parameters) // 12)

    return sizes


def test_rows_are_written_in_batches_of_one_insert(database_url):
    migrate.upgrade(database_url)
    recorder = RequestRecorder(database_url, run_id="run-1", batch_size=100, flush_interval_s=60)
    sizes = insert_sizes(recorder)
    for i in range(250):
        recorder.record(record(i))
    assert recorder.flush(timeout=10)
    assert recorder.close(timeout=10)

    # Two full batches as soon as they filled; the remainder when flushed (the interval is far away).
    assert sizes == [100, 100, 50]
    rows = stored(database_url)
    assert [row["id"] for row in rows] == [f"chatcmpl-{i:05d}" for i in range(250)]
    assert rows[3] == {
        "id": "chatcmpl-00003",
        "run_id": "run-1",
        "model": "smollm2",
        "status_code": 200,
        "finish_reason": "stop",
        "prompt_tokens": 5,
        "completion_tokens": 7,
        "ttft_ms": 10.0,
        "latency_ms": 103.0,
        "stream": False,
        "created_at": T0 + timedelta(seconds=3),
        "key_id": None,
    }
    assert (recorder.written, recorder.dropped, recorder.pending) == (250, 0, 0)


def test_a_partial_batch_is_written_after_the_flush_interval(database_url):
    migrate.upgrade(database_url)
    recorder = RequestRecorder(database_url, batch_size=100, flush_interval_s=0.05)
    try:
        recorder.record(record(1, run_id="own", key_id="key-1"))
        assert wait_for(lambda: recorder.written == 1)
        assert stored_ids(database_url) == ["chatcmpl-00001"]
        assert (stored(database_url)[0]["run_id"], stored(database_url)[0]["key_id"]) == ("own", "key-1")
    finally:
        recorder.close()


def test_an_outage_loses_no_rows(database_url, tmp_path, caplog):
    """Rows recorded while the database is gone stay buffered and arrive once it is back."""
    is_sqlite = parse_url(database_url).get_backend_name() == "sqlite"
    if is_sqlite:
        # A database file in its own folder, so the folder can vanish and come back.
        folder = tmp_path / "db"
        folder.mkdir()
        database_url = f"sqlite:///{folder / 'aana.db'}"
    migrate.upgrade(database_url)
    recorder = RequestRecorder(database_url, batch_size=50, flush_interval_s=0.02, retry_max_s=0.05)
    try:
        for i in range(10):
            recorder.record(record(i))
        assert recorder.flush(timeout=10)

        caplog.set_level(logging.WARNING, logger="aana.store.recorder")
        if is_sqlite:
            folder.rename(tmp_path / "away")
        else:
            admin_url, name = _admin_and_name(database_url)
            drop_database(admin_url, name)
        for i in range(10, 130):
            recorder.record(record(i))
        assert not recorder.flush(timeout=0.5)
        assert recorder.pending == 120
        assert any("keeping" in r.getMessage() and "retrying" in r.getMessage() for r in caplog.records)

        if is_sqlite:
            (tmp_path / "away").rename(folder)
        else:
            create_database(admin_url, name)
            migrate.upgrade(database_url)  # the dropped database comes back empty
        assert recorder.flush(timeout=10)
    finally:
        recorder.close()

    expected = range(130) if is_sqlite else range(10, 130)
    assert stored_ids(database_url) == [f"chatcmpl-{i:05d}" for i in expected]
    assert recorder.dropped == 0
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_beyond_the_buffer_the_oldest_rows_are_dropped(database_url, tmp_path, caplog):
    # Never migrated: every write fails, as during an outage, until the schema appears.
    recorder = RequestRecorder(database_url, max_buffered=5, flush_interval_s=0.02, retry_max_s=0.05)
    caplog.set_level(logging.WARNING, logger="aana.store.recorder")
    try:
        for i in range(8):
            recorder.record(record(i))
        assert not recorder.flush(timeout=0.3)
        assert wait_for(lambda: recorder.dropped == 3)
        assert any("request buffer full (5 rows)" in r.getMessage() for r in caplog.records)

        migrate.upgrade(database_url)
        assert recorder.flush(timeout=10)
    finally:
        recorder.close()
    assert stored_ids(database_url) == [f"chatcmpl-{i:05d}" for i in range(3, 8)]


def test_a_row_the_database_rejects_does_not_block_the_others(database_url, caplog):
    migrate.upgrade(database_url)
    recorder = RequestRecorder(database_url, flush_interval_s=60)
    caplog.set_level(logging.WARNING, logger="aana.store.recorder")
    for i in range(5):
        recorder.record(record(i, created_at="yesterday") if i == 2 else record(i))
    assert recorder.flush(timeout=10)
    recorder.close()
    assert stored_ids(database_url) == ["chatcmpl-00000", "chatcmpl-00001", "chatcmpl-00003", "chatcmpl-00004"]
    assert (recorder.written, recorder.dropped) == (4, 1)
    assert any("chatcmpl-00002" in r.getMessage() and "dropped" in r.getMessage() for r in caplog.records)


def test_poisoned_rows_are_dropped_alone_and_every_good_row_behind_them_is_written(database_url, caplog):
    """A lone surrogate (SQLite's driver cannot encode it, PostgreSQL's refuses it) and a model name longer than the
    column: each row is dropped and logged by id, never with its content, and never read as an outage."""
    migrate.upgrade(database_url)
    recorder = RequestRecorder(database_url, flush_interval_s=0.05, retry_max_s=0.2)
    caplog.set_level(logging.WARNING, logger="aana.store.recorder")
    poisons = {3: {"model": "\ud800"}, 6: {"finish_reason": "x" * 10_000}}
    for i in range(10):
        recorder.record(record(i, **poisons.get(i, {})))
        time.sleep(0.02)  # spread over several batches, so good rows come after a poisoned one
    assert recorder.flush(timeout=10)
    recorder.close()
    good = [f"chatcmpl-{i:05d}" for i in range(10) if i not in poisons]
    written = stored_ids(database_url)
    assert set(good) <= set(written)
    assert "chatcmpl-00003" not in written
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "chatcmpl-00003" in messages and "\ud800" not in messages and "x" * 100 not in messages
    assert "reachable again" not in messages  # no row was taken for an outage


def test_a_retried_row_is_not_written_twice(database_url):
    migrate.upgrade(database_url)
    recorder = RequestRecorder(database_url, flush_interval_s=60)
    recorder.record(record(1, latency_ms=1.0))
    assert recorder.flush(timeout=10)
    recorder.record(record(1, latency_ms=2.0))  # same id: as when a commit succeeded but its reply was lost
    assert recorder.flush(timeout=10)
    recorder.close()
    assert [(row["id"], row["latency_ms"]) for row in stored(database_url)] == [("chatcmpl-00001", 1.0)]


def test_record_after_close_neither_raises_nor_writes(database_url):
    migrate.upgrade(database_url)
    recorder = RequestRecorder(database_url)
    assert recorder.close()
    recorder.record(record(1))
    assert recorder.close()
    assert stored_ids(database_url) == []


def _admin_and_name(url: str) -> tuple[str, str]:
    parsed = parse_url(url)
    return parsed.set(database="postgres").render_as_string(hide_password=False), parsed.database
