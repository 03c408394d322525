"""`aana up` runs and request statistics, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pytest

from runtime.records import CompletionRecord
from runtime.store import migrate, runs
from runtime.store.errors import StoreError
from runtime.store.recorder import RequestRecorder
from runtime.store.runs import ModelStats

T0 = datetime(2025, 6, 1, 12, 0, tzinfo=timezone.utc)
SPEC = 'name = "demo"\n[[models]]\nname = "smollm2"\n'


def test_a_run_from_start_to_stop(database_url):
    migrate.upgrade(database_url)
    run_id = runs.record_start(database_url, "demo", SPEC, None, "http://127.0.0.1:8000/v1", now=T0)

    started = runs.get_run(database_url, run_id)
    assert (started.app_name, started.state, started.ray_address, started.base_url) == (
        "demo",
        "starting",
        None,
        "http://127.0.0.1:8000/v1",
    )
    assert started.spec_text == SPEC
    assert started.spec_hash == hashlib.sha256(SPEC.encode()).hexdigest()
    assert started.started_at == T0 and started.stopped_at is None

    runs.record_state(database_url, run_id, "running")
    assert runs.get_run(database_url, run_id).state == "running"

    runs.record_stop(database_url, run_id, now=T0 + timedelta(hours=1))
    stopped = runs.get_run(database_url, run_id)
    assert (stopped.state, stopped.stopped_at, stopped.error) == ("stopped", T0 + timedelta(hours=1), None)


def test_a_failed_run_keeps_its_error(database_url):
    migrate.upgrade(database_url)
    run_id = runs.record_start(database_url, "demo", SPEC, "ray://head:10001", "http://h:8000/v1")
    runs.record_stop(database_url, run_id, state="failed", error="model smollm2: out of memory")
    failed = runs.get_run(database_url, run_id)
    assert (failed.state, failed.error) == ("failed", "model smollm2: out of memory")
    assert failed.ray_address == "ray://head:10001"


def test_recent_runs_newest_first(database_url):
    migrate.upgrade(database_url)
    ids = [
        runs.record_start(database_url, app, SPEC, None, "u", now=T0 + timedelta(minutes=i))
        for i, app in enumerate(["a", "b", "a"])
    ]
    assert [r.id for r in runs.recent_runs(database_url)] == ids[::-1]
    assert [r.id for r in runs.recent_runs(database_url, app_name="a", limit=1)] == [ids[2]]


def test_a_run_left_running_is_marked_lost_once_with_when_it_was_noticed(database_url):
    migrate.upgrade(database_url)
    run_id = runs.record_start(database_url, "demo", SPEC, None, "u", now=T0)
    runs.record_state(database_url, run_id, "running")
    assert runs.mark_lost(database_url, run_id, "aana up (pid 7) is gone", now=T0 + timedelta(hours=2))
    lost = runs.get_run(database_url, run_id)
    assert (lost.state, lost.stopped_at, lost.error) == ("lost", T0 + timedelta(hours=2), "aana up (pid 7) is gone")
    assert not runs.mark_lost(database_url, run_id, "again")  # already ended: left as it was
    stopped = runs.record_start(database_url, "demo", SPEC, None, "u")
    runs.record_stop(database_url, stopped)
    assert not runs.mark_lost(database_url, stopped, "late")
    assert runs.get_run(database_url, stopped).state == "stopped"


def test_unknown_run_and_unknown_state(database_url):
    migrate.upgrade(database_url)
    with pytest.raises(StoreError, match=r"^no run 'nope' in the database at "):
        runs.record_state(database_url, "nope", "running")
    with pytest.raises(ValueError, match="state must be one of starting, running, stopped, failed, lost, not 'paused'"):
        runs.record_state(database_url, "nope", "paused")


def test_request_stats(database_url):
    migrate.upgrade(database_url)
    recorder = RequestRecorder(database_url, run_id="run-1", flush_interval_s=60)
    latencies = [10.0, 20.0, 30.0, 40.0, 50.0]
    for i, latency in enumerate(latencies):
        recorder.record(
            CompletionRecord(
                id=f"a{i}",
                model="alpha",
                status_code=500 if i == 4 else 200,
                latency_ms=latency,
                ttft_ms=None if i == 4 else latency / 10,
                prompt_tokens=3,
                completion_tokens=i,
                stream=i < 2,
                created_at=T0 + timedelta(seconds=i),
            )
        )
    recorder.record(CompletionRecord(id="b0", model="beta", status_code=400, latency_ms=7.0, created_at=T0))
    # A client that left is counted, but is not an error.
    recorder.record(CompletionRecord(id="b1", model="beta", status_code=499, latency_ms=3.0, created_at=T0))
    recorder.record(
        CompletionRecord(id="old", model="alpha", status_code=200, latency_ms=9e9, created_at=T0 - timedelta(days=1))
    )
    recorder.record(
        CompletionRecord(id="other", model="beta", status_code=200, latency_ms=1.0, created_at=T0, run_id="run-2")
    )
    assert recorder.close(timeout=10)

    assert runs.request_stats(database_url, since=T0, run_id="run-1") == [
        # ttft of the four successes [1, 2, 3, 4]: p50 = 2.5, p95 = 3 + 0.85 * 1; latency p95 = 40 + 0.8 * 10
        ModelStats("alpha", 5, 1, 2, 15, 10, 2.5, pytest.approx(3.85), 30.0, pytest.approx(48.0)),
        ModelStats("beta", 2, 1, 0, 0, 0, None, None, 5.0, pytest.approx(6.8)),
    ]
    everything = runs.request_stats(database_url, since=T0 - timedelta(days=2))
    assert [(s.model, s.count, s.errors) for s in everything] == [("alpha", 6, 1), ("beta", 3, 1)]
    # A naive `since` is UTC; an aware one in another zone means the same instant.
    tz = timezone(timedelta(hours=2))
    assert runs.request_stats(database_url, since=(T0 + timedelta(seconds=3)).astimezone(tz)) == runs.request_stats(
        database_url, since=(T0 + timedelta(seconds=3)).replace(tzinfo=None)
    )
    assert [s.count for s in runs.request_stats(database_url, since=T0 + timedelta(seconds=3))] == [2]


def test_percentile():
    assert runs.percentile([], 0.5) is None
    assert runs.percentile([5.0], 0.95) == 5.0
    assert runs.percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
