"""`aana usage`'s query on SQLite and PostgreSQL: per UTC day, key and model, errors without 499, filters."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone

import pytest
from sqlalchemy import create_engine, insert, text

from runtime.store import keys, migrate
from runtime.store.db import parse_url
from runtime.store.keys import KeyNotFound
from runtime.store.models import Request
from runtime.store.usage import NO_KEY, UsageRow, usage

DAY = datetime(2025, 6, 1, tzinfo=timezone.utc)


@pytest.fixture
def url(database_url):
    migrate.upgrade(database_url)
    return database_url


def add_requests(url: str, rows: list[dict]) -> None:
    engine = create_engine(parse_url(url))
    try:
        with engine.begin() as conn:
            conn.execute(insert(Request), rows)
    finally:
        engine.dispose()


def request(i: int, at: datetime, key_id: str | None, model: str = "smollm2", status: int = 200) -> dict:
    return dict(
        id=f"chatcmpl-{i}",
        run_id=None,
        model=model,
        status_code=status,
        finish_reason="stop",
        prompt_tokens=10 * i,
        completion_tokens=i,
        ttft_ms=None,
        latency_ms=1.0,
        stream=False,
        created_at=at,
        key_id=key_id,
    )


@pytest.fixture
def traffic(url):
    """alice and no key on two days, bob once; the last minute and first second of a UTC day."""
    alice, _ = keys.create_key(url, "alice")
    bob, _ = keys.create_key(url, "bob")
    add_requests(
        url,
        [
            request(1, DAY + timedelta(hours=1), alice.id),
            request(2, DAY + timedelta(hours=2), alice.id, status=500),
            request(3, DAY + timedelta(hours=3), alice.id, status=499),  # the client left: not an error
            request(4, DAY + timedelta(hours=23, minutes=59, seconds=59), alice.id, status=404),
            request(5, DAY + timedelta(days=1, seconds=1), alice.id),
            request(6, DAY + timedelta(hours=5), alice.id, model="minilm"),
            request(7, DAY + timedelta(hours=6), None),
            request(8, DAY + timedelta(days=1, hours=6), None, status=429),
            request(9, DAY + timedelta(hours=7), bob.id),
            request(10, DAY - timedelta(seconds=1), alice.id),  # before the window
            request(11, DAY + timedelta(hours=8), "deleted-key-id"),  # a key id without a key row
        ],
    )
    return alice, bob


def test_per_utc_day_key_and_model(url, traffic):
    day1, day2 = date(2025, 6, 1), date(2025, 6, 2)
    assert usage(url, DAY) == [
        UsageRow(day1, NO_KEY, "smollm2", 1, 0, 70, 7),
        UsageRow(day2, NO_KEY, "smollm2", 1, 1, 80, 8),
        UsageRow(day1, "alice", "minilm", 1, 0, 60, 6),
        UsageRow(day1, "alice", "smollm2", 4, 2, 100, 10),
        UsageRow(day2, "alice", "smollm2", 1, 0, 50, 5),
        UsageRow(day1, "bob", "smollm2", 1, 0, 90, 9),
        UsageRow(day1, "deleted-key-id", "smollm2", 1, 0, 110, 11),
    ]


def test_days_are_utc_whatever_the_session_time_zone(url, traffic):
    engine = create_engine(parse_url(url))
    try:
        if engine.dialect.name == "postgresql":
            # UTC+14: a bare ::date would move every request past 10:00 UTC to the next day.
            with engine.begin() as conn:
                conn.execute(text(f"ALTER DATABASE {engine.url.database} SET timezone = 'Pacific/Kiritimati'"))
    finally:
        engine.dispose()
    assert {(row.day, row.key, row.requests) for row in usage(url, DAY, key="alice", model="smollm2")} == {
        (date(2025, 6, 1), "alice", 4),
        (date(2025, 6, 2), "alice", 1),
    }


def test_filters_by_key_name_prefix_no_key_and_model(url, traffic):
    alice, bob = traffic
    assert sum(row.requests for row in usage(url, DAY, key="alice")) == 6
    assert usage(url, DAY, key=alice.prefix) == usage(url, DAY, key="alice")
    assert usage(url, DAY, key=bob.prefix) == [UsageRow(date(2025, 6, 1), "bob", "smollm2", 1, 0, 90, 9)]
    assert [(row.key, row.requests) for row in usage(url, DAY, key=NO_KEY)] == [(NO_KEY, 1), (NO_KEY, 1)]
    assert [(row.key, row.requests) for row in usage(url, DAY, model="minilm")] == [("alice", 1)]
    assert usage(url, DAY + timedelta(days=2)) == []
    with pytest.raises(KeyNotFound):
        usage(url, DAY, key="carol")


def test_an_empty_window(url):
    assert usage(url, DAY) == []
