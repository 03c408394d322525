"""Recording one row per chat completion without ever slowing a request down or losing a row to an outage.

`record()` only puts the row on a `queue.SimpleQueue`: it never blocks the event loop and never raises. A daemon
thread takes rows off the queue and writes them in batches, one multi-row INSERT per batch. When the database is
down, rows stay buffered (up to `max_buffered`; beyond that the oldest are dropped with a warning) and the thread
retries with exponential backoff. Inserts skip ids already present, so a batch whose commit succeeded but whose
reply was lost can be retried without duplicates.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass
from itertools import islice

from sqlalchemy import Engine, exc, insert
from sqlalchemy.dialects import postgresql, sqlite

from runtime.records import CompletionRecord
from runtime.store.db import make_engine, mask_url, parse_url
from runtime.store.models import Request

logger = logging.getLogger("aana.store.recorder")

# SQLite allows 32766 bound parameters per statement and PostgreSQL 65535; 1000 rows of 12 columns fit both.
MAX_BATCH_SIZE = 1000
_FIRST_RETRY_S = 0.1
# Failures of the connection or the schema, not of a row: the rows stay buffered and the write is retried with
# backoff. ProgrammingError is PostgreSQL's missing table (a database not migrated yet); SQLite says
# OperationalError.
_OUTAGE = (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError, exc.TimeoutError, exc.ProgrammingError)


@dataclass(frozen=True)
class _Flush:
    done: threading.Event


_STOP = object()


class RequestRecorder:
    """Writes `CompletionRecord`s to the requests table from a background thread.

    url: database URL (the schema must be current; see `runtime.store.migrate.require_current`).
    run_id: the `aana up` run, stored on every row that does not name its own.
    batch_size: rows per INSERT (at most MAX_BATCH_SIZE); a full batch is written at once.
    flush_interval_s: a partial batch waits at most this long.
    max_buffered: rows kept while the database is unreachable; the oldest beyond this are dropped.
    retry_max_s: the longest wait between two attempts during an outage.

    A bad URL or missing driver raises `StoreError` here, at construction; after that nothing raises.
    Counters `written`, `dropped` (buffer overflow, or rejected by the database) and `pending` say what happened to
    the rows so far.
    """

    def __init__(
        self,
        url: str,
        run_id: str | None = None,
        *,
        batch_size: int = 500,
        flush_interval_s: float = 1.0,
        max_buffered: int = 100_000,
        retry_max_s: float = 30.0,
    ) -> None:
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, not {batch_size}")
        self.url = mask_url(url)
        self.run_id = run_id
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.max_buffered = max_buffered
        self.retry_max_s = retry_max_s
        # SQLite: a fresh connection per batch, so a file that vanished is noticed instead of written behind.
        backend = parse_url(url).get_backend_name()
        self._engine: Engine = make_engine(url, pool=backend != "sqlite")
        self._insert = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}.get(backend)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._closed = False
        # Owned by the writer thread only.
        self._pending: deque[dict] = deque()
        self._received = 0  # rows taken off the queue
        self._done = 0  # rows written or dropped, oldest first
        self._waiters: list[tuple[int, threading.Event]] = []
        self._retry_s = 0.0  # 0 while the database answers
        self._outage_started: float | None = None
        self.written = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="aana-request-recorder", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Rows recorded but not yet written (queued or buffered)."""
        return self._received - self._done + self._queue.qsize()

    def record(self, row: CompletionRecord) -> None:
        """Queue one row for writing. Never blocks, never raises."""
        if self._closed:
            logger.warning("request %s recorded after the recorder closed; not written", row.id)
            return
        self._queue.put(row)

    def flush(self, timeout: float | None = 10.0) -> bool:
        """Wait until every row recorded before this call is written (or dropped); False if `timeout` passed first.

        Also makes the writer retry now if it is waiting out an outage.
        """
        done = threading.Event()
        self._queue.put(_Flush(done))
        return done.wait(timeout)

    def close(self, timeout: float | None = 10.0) -> bool:
        """Flush, stop the writer and release the database. False (with a warning) if rows were left unwritten."""
        if self._closed:
            return self.pending == 0
        self._closed = True
        flushed = self.flush(timeout)
        self._queue.put(_STOP)
        self._thread.join(timeout)
        if not flushed:
            logger.warning(
                "%d request records could not be written to %s before shutdown and are lost", self.pending, self.url
            )
        self._engine.dispose()
        return flushed

    # The writer thread.

    def _run(self) -> None:
        next_write = time.monotonic() + self.flush_interval_s
        while True:
            item = self._next(max(0.0, next_write - time.monotonic()))
            write_now = False
            taken = 0
            # Take what has arrived, but at most a batch at a time: under a steady stream of requests an unbounded
            # drain would never get to writing.
            while item is not None:
                if item is _STOP:
                    return
                if isinstance(item, _Flush):
                    self._waiters.append((self._received, item.done))
                    write_now = True
                    break
                self._take(item)
                taken += 1
                if taken >= self.batch_size:
                    break
                item = self._next(0.0)
            full = len(self._pending) >= self.batch_size and self._retry_s == 0
            due = write_now or time.monotonic() >= next_write
            if due or full:
                # A full batch goes at once; the rest waits for its interval (or a flush) to fill up more.
                next_write = time.monotonic() + (self._write(full_only=not due) or self.flush_interval_s)
                self._wake_waiters()

    def _next(self, timeout: float):
        try:
            return self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
        except queue.Empty:
            return None

    def _take(self, row: CompletionRecord) -> None:
        self._pending.append(
            {
                "id": row.id,
                "run_id": row.run_id or self.run_id,
                "model": row.model,
                "status_code": row.status_code,
                "finish_reason": row.finish_reason,
                "prompt_tokens": row.prompt_tokens,
                "completion_tokens": row.completion_tokens,
                "ttft_ms": row.ttft_ms,
                "latency_ms": row.latency_ms,
                "stream": row.stream,
                "created_at": row.created_at,
                "key_id": row.key_id,
            }
        )
        self._received += 1
        if len(self._pending) > self.max_buffered:
            self._pending.popleft()
            self._done += 1
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 10_000 == 0:
                logger.warning(
                    "request buffer full (%d rows) while %s is unreachable: %d oldest rows dropped so far",
                    self.max_buffered,
                    self.url,
                    self.dropped,
                )

    def _write(self, full_only: bool = False) -> float:
        """Write the buffered rows (only whole batches if full_only).

        Returns 0 when they went in, else the seconds to wait before retrying.
        """
        while self._pending and (len(self._pending) >= self.batch_size or not full_only):
            batch = list(islice(self._pending, self.batch_size))
            try:
                written = self._insert_batch(batch)
            except _OUTAGE as error:
                return self._failed(error)
            for _ in range(len(batch)):
                self._pending.popleft()
            self._done += len(batch)
            self.written += written
            self.dropped += len(batch) - written
        if self._outage_started is not None:
            logger.warning(
                "%s is reachable again after %.1f s; buffered request records written",
                self.url,
                time.monotonic() - self._outage_started,
            )
            self._outage_started = None
        self._retry_s = 0.0
        return 0.0

    def _insert_batch(self, batch: list[dict]) -> int:
        """Insert a batch in one statement; rows that fail on their own merits are logged and dropped.

        Only a connection-level failure (`_OUTAGE`) is an outage, raised for the caller to retry; anything else is
        some row's fault (a value the driver cannot encode or the database refuses), so the batch is written row by
        row and the bad rows dropped: one poisoned row never blocks the rows behind it. Logs name the row's id and
        the error's type only, never the row's content (it may hold what a client sent).
        Returns how many rows are now stored (ids already present count: they were written by an earlier try).
        """
        try:
            with self._engine.begin() as conn:
                conn.execute(self._statement(), batch)
            return len(batch)
        except _OUTAGE:
            raise
        except Exception as error:  # the row's fault, whatever the driver raised (e.g. UnicodeEncodeError)
            logger.warning(
                "a batch of request records was rejected (%s); writing its rows one by one", type(error).__name__
            )
        written = 0
        for row in batch:
            try:
                with self._engine.begin() as conn:
                    conn.execute(self._statement(), [row])
                written += 1
            except _OUTAGE:
                raise
            except Exception as error:  # the poisoned row is dropped, the writer goes on
                logger.error("request record %s cannot be stored and is dropped (%s)", row["id"], type(error).__name__)
        return written

    def _statement(self):
        # With RETURNING, SQLAlchemy sends a batch as one multi-row INSERT ("insertmanyvalues"), compiled once and
        # cached; `.values(rows)` would compile 12 parameters per row on every batch (about 10x slower).
        if self._insert is None:
            return insert(Request)
        return self._insert(Request).on_conflict_do_nothing(index_elements=["id"]).returning(Request.id)

    def _failed(self, error: Exception) -> float:
        if self._outage_started is None:
            self._outage_started = time.monotonic()
            logger.warning(
                "could not write request records to %s (%s); keeping %d rows and retrying",
                self.url,
                str(getattr(error, "orig", None) or error).strip().splitlines()[0],
                len(self._pending),
            )
        self._retry_s = min(max(self._retry_s * 2, _FIRST_RETRY_S), self.retry_max_s)
        return self._retry_s

    def _wake_waiters(self) -> None:
        still_waiting = []
        for target, done in self._waiters:
            if self._done >= target:
                done.set()
            else:
                still_waiting.append((target, done))
        self._waiters = still_waiting
