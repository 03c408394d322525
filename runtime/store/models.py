"""The tables aana keeps, as typed SQLAlchemy models.

These describe the schema at the newest migration; the migrations in the `migrations` package are what create it,
and a test checks that the two agree. Change both together: a new column here needs a new revision there.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import ClassVar

from sqlalchemy import DateTime, Dialect, Float, Index, Integer, MetaData, String, Text, TypeDecorator, false
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Explicit constraint and index names, so migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def as_utc(value: datetime) -> datetime:
    """`value` in UTC; a naive datetime is taken to be UTC already."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class UTCDateTime(TypeDecorator):
    """A timestamp stored in UTC and always read back timezone-aware.

    PostgreSQL keeps the zone; SQLite keeps only the wall clock, so both sides are normalised to UTC here and
    comparisons such as `created_at >= since` mean the same on both.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict] = {datetime: UTCDateTime}


class Run(Base):
    """One `aana up` run: which spec it served, where, and how it ended."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # uuid4, as text so every database agrees
    app_name: Mapped[str] = mapped_column(String(200))
    spec_text: Mapped[str] = mapped_column(Text)
    spec_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of spec_text
    ray_address: Mapped[str | None] = mapped_column(String(500))
    base_url: Mapped[str] = mapped_column(String(500))
    started_at: Mapped[datetime] = mapped_column()
    stopped_at: Mapped[datetime | None] = mapped_column()
    state: Mapped[str] = mapped_column(String(20))  # starting | running | stopped | failed
    error: Mapped[str | None] = mapped_column(Text)


class Request(Base):
    """One chat completion as the server answered it: who, how long, how many tokens, how it ended."""

    __tablename__ = "requests"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)  # the chatcmpl-... id the client saw
    # No foreign key on purpose: the recorder must never lose a batch of requests to a constraint, and requests
    # served while the runs row could not be written still belong in the table.
    run_id: Mapped[str | None] = mapped_column(String(36))
    model: Mapped[str] = mapped_column(String(200))
    status_code: Mapped[int] = mapped_column(Integer)
    finish_reason: Mapped[str | None] = mapped_column(String(20))
    prompt_tokens: Mapped[int] = mapped_column(Integer)
    completion_tokens: Mapped[int] = mapped_column(Integer)
    ttft_ms: Mapped[float | None] = mapped_column(Float)
    latency_ms: Mapped[float] = mapped_column(Float)
    stream: Mapped[bool] = mapped_column(server_default=false())
    created_at: Mapped[datetime] = mapped_column(index=True)
    # The API key that made the request (api_keys.id); None for the spec's single api_key or a server without auth.
    # No foreign key, for the same reason as run_id; a deleted key's requests keep counting in usage.
    key_id: Mapped[str | None] = mapped_column(String(36))

    __table_args__ = (
        Index("ix_requests_run_id_created_at", "run_id", "created_at"),
        # `aana usage --key`: one key's window without reading the other keys' rows (see migration 0005).
        Index("ix_requests_key_id_created_at", "key_id", "created_at"),
    )


class ApiKeyRow(Base):
    """One API key: who it is for, what it may use, how fast. Never the key itself: its sha256 and its prefix.

    `runtime.store.keys.ApiKey` is what the rest of aana sees of a row.
    """

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)  # uuid4, as text
    name: Mapped[str] = mapped_column(String(200), unique=True)
    prefix: Mapped[str] = mapped_column(String(32), unique=True, index=True)  # "aana-" + 8: the lookup part
    key_hash: Mapped[str] = mapped_column(String(64))  # sha256 hex of the whole key
    models: Mapped[str | None] = mapped_column(Text)  # a JSON list of model names; None: every model
    rpm: Mapped[int | None] = mapped_column(Integer)  # requests per minute; None: no limit
    tpm: Mapped[int | None] = mapped_column(Integer)  # tokens per minute; None: no limit
    created_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime | None] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()


class StoredCompletionRow(Base):
    """A chat completion made with `store: true`: the request as sent and the response as returned, as JSON text.

    `runtime.store.stored.StoredCompletion` is what the rest of aana sees of a row.
    """

    __tablename__ = "stored_completions"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)  # the chatcmpl-... id
    key_id: Mapped[str | None] = mapped_column(String(36))  # the owner; None: the spec's api_key or no auth
    model: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(index=True)  # the retention purge
    # `metadata` is taken on a declarative class; the column keeps OpenAI's name.
    metadata_: Mapped[str] = mapped_column("metadata", Text)
    request: Mapped[str] = mapped_column(Text)
    response: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_stored_completions_key_id_created_at", "key_id", "created_at"),)
