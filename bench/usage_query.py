"""How long `aana usage` takes on a big requests table: a 7-day window, and one key's 7 days, at 10 M rows.

    python bench/usage_query.py                      # 10 M rows over 90 days in a temporary SQLite file
    python bench/usage_query.py --rows 1000000 --db /tmp/usage.db --keep

Builds the schema with the real migrations, makes --keys keys with `aana keys`' own code, then generates the
request rows inside SQLite (INSERT ... SELECT over a recursive CTE, in chunks; the indexes are dropped for the load
and built again after, as the migration defines them). Rows are spread evenly over --days days ending now: every
(keys + 1)-th row has no key, 3 models, 2 % errors, 1 % client-closed. Then times `runtime.store.usage.usage` for
the last 7 days (all keys) and for one key, --repeat times each, and prints the query plan. Never passes or fails.
With --db FILE --keep a second run reuses a file that already has --rows rows.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.schema import CreateIndex

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from runtime.store import keys, migrate
from runtime.store.models import Request
from runtime.store.usage import usage

CHUNK = 1_000_000


def fill(path: Path, rows: int, days: int, key_count: int, now: datetime) -> None:
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    key_ids = [keys.create_key(url, f"key-{i:02d}")[0].id for i in range(key_count)]
    indexes = list(Request.__table__.indexes)
    ddl = [str(CreateIndex(index).compile(create_engine("sqlite://"))) for index in indexes]
    start = int((now - timedelta(days=days)).timestamp())
    span = days * 86400
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=OFF")
    db.execute("PRAGMA synchronous=OFF")
    for index in indexes:
        db.execute(f"DROP INDEX {index.name}")
    db.execute("CREATE TEMP TABLE bench_keys (k INTEGER PRIMARY KEY, id TEXT)")
    db.executemany("INSERT INTO bench_keys VALUES (?, ?)", enumerate(key_ids))
    began = time.perf_counter()
    for first in range(0, rows, CHUNK):
        last = min(first + CHUNK, rows) - 1
        db.execute(
            f"""
            WITH RECURSIVE c(n) AS (SELECT {first} UNION ALL SELECT n + 1 FROM c WHERE n < {last})
            INSERT INTO requests (id, run_id, model, status_code, finish_reason, prompt_tokens, completion_tokens,
                                  ttft_ms, latency_ms, stream, created_at, key_id)
            SELECT printf('chatcmpl-%012d', n), 'bench-run', 'model-' || (n / 7 % 3),
                   CASE WHEN n % 50 = 0 THEN 500 WHEN n % 100 = 1 THEN 499 ELSE 200 END, 'stop',
                   20 + n % 500, 1 + n % 300, 12.5, 250.0, n % 2,
                   strftime('%Y-%m-%d %H:%M:%S', {start} + n * {span} / {rows}, 'unixepoch') || '.000000',
                   (SELECT id FROM bench_keys WHERE k = n % {key_count + 1})
            FROM c
            """
        )
        db.commit()
        print(f"  {last + 1:>12,} rows  {time.perf_counter() - began:6.1f} s", flush=True)
    began = time.perf_counter()
    for statement in ddl:
        db.execute(statement)
    db.execute("ANALYZE")
    db.commit()
    db.close()
    print(f"  indexes and ANALYZE  {time.perf_counter() - began:6.1f} s", flush=True)


def timed(call, repeat: int) -> tuple[list[float], object]:
    times, result = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        result = call()
        times.append(time.perf_counter() - began)
    return times, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=90, help="the rows span this many days, ending now")
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", type=Path, help="SQLite file (default: a temporary one, deleted after)")
    parser.add_argument("--keep", action="store_true", help="keep --db, and reuse it when it already has --rows rows")
    args = parser.parse_args()

    folder = None if args.db else tempfile.TemporaryDirectory(prefix="aana-usage-bench-")
    path = args.db or Path(folder.name) / "usage.db"
    now = datetime.now(timezone.utc)
    try:
        existing = _row_count(path)
        if existing != args.rows:
            path.unlink(missing_ok=True)
            print(f"filling {path} with {args.rows:,} request rows over {args.days} days, {args.keys} keys")
            began = time.perf_counter()
            fill(path, args.rows, args.days, args.keys, now)
            print(f"filled in {time.perf_counter() - began:.1f} s; file {path.stat().st_size / 2**30:.2f} GiB")
        else:
            print(f"reusing {path} ({existing:,} rows)")
        url = f"sqlite:///{path}"
        since = now - timedelta(days=7)
        one_key = keys.list_keys(url)[0].name
        statements: list[tuple[str, tuple]] = []

        @event.listens_for(Engine, "before_cursor_execute")
        def _capture(conn, cursor, statement, parameters, context, executemany):
            if "GROUP BY" in statement:
                statements.append((statement, parameters))

        for label, call in (
            ("7 days, all keys", lambda: usage(url, since)),
            (f"7 days, key {one_key}", lambda: usage(url, since, key=one_key)),
            ("7 days, one model", lambda: usage(url, since, model="model-1")),
        ):
            statements_before = len(statements)
            times, result = timed(call, args.repeat)
            del statements[statements_before + 1 :]
            counted = sum(row.requests for row in result)
            print(
                f"{label:<22} {len(result):>4} groups over {counted:>10,} requests: "
                f"median {statistics.median(times) * 1000:8.1f} ms  [min {min(times) * 1000:.1f}, "
                f"max {max(times) * 1000:.1f}] over {args.repeat} runs"
            )
        print("query plans:")
        _print_plans(path, statements)
    finally:
        if folder is not None:
            folder.cleanup()
        elif not args.keep:
            path.unlink(missing_ok=True)


def _row_count(path: Path) -> int | None:
    if not path.exists():
        return None
    try:
        with sqlite3.connect(path) as db:
            return db.execute("SELECT count(*) FROM requests").fetchone()[0]
    except sqlite3.Error:
        return None


def _print_plans(path: Path, statements: list[tuple[str, tuple]]) -> None:
    """SQLite's plan for each query `usage` sent (captured as it ran), so a missing index shows as SCAN."""
    with sqlite3.connect(path) as db:
        for statement, parameters in statements:
            plan = db.execute(f"EXPLAIN QUERY PLAN {statement}", parameters).fetchall()
            print("  " + "; ".join(row[-1] for row in plan))


if __name__ == "__main__":
    main()
