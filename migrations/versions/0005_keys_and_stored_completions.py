"""Add API keys, requests.key_id and stored completions.

A team gives each person or service a key of its own (`aana keys`), so the server can tell callers apart, limit each,
and say who used what (`aana usage`). `api_keys` keeps the key's sha256 and its lookup prefix, never the key.
`requests.key_id` says which key made a request; old rows, and requests made with the spec's single api_key, have
none. Not a foreign key, like run_id: the recorder must never lose a batch to a constraint, and usage outlives a key.

`ix_requests_key_id_created_at` serves `aana usage --key`: one key's window is read without the other keys' rows.
Usage for every key uses 0002's `ix_requests_created_at`. Measured with bench/usage_query.py on SQLite at 10 M rows,
the week's usage for every key takes the same time with or without an index covering every column it reads (the
GROUP BY's sort dominates, and rows lie in time order), and (created_at, key_id, model) made neither query faster:
neither was worth its cost on every insert.

`stored_completions` keeps a chat completion made with `store: true` for the key that made it: the request and the
response as JSON text, listed by key and time, purged by age.

Downgrading drops the new tables, index and column; every request row keeps everything else.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        # "aana-" and 8 characters: the part of a key the ingress looks it up by before comparing hashes.
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False),
        # A JSON list of model names; NULL: every model. NULL limits: none.
        sa.Column("models", sa.Text(), nullable=True),
        sa.Column("rpm", sa.Integer(), nullable=True),
        sa.Column("tpm", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.UniqueConstraint("name", name="uq_api_keys_name"),
    )
    op.create_index("ix_api_keys_prefix", "api_keys", ["prefix"], unique=True)

    op.add_column("requests", sa.Column("key_id", sa.String(36), nullable=True))
    op.create_index("ix_requests_key_id_created_at", "requests", ["key_id", "created_at"])

    op.create_table(
        "stored_completions",
        sa.Column("id", sa.String(100), nullable=False),
        sa.Column("key_id", sa.String(36), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("metadata", sa.Text(), nullable=False),
        sa.Column("request", sa.Text(), nullable=False),
        sa.Column("response", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_stored_completions"),
    )
    # Listing a key's completions in time order; the purge reads by age alone.
    op.create_index("ix_stored_completions_key_id_created_at", "stored_completions", ["key_id", "created_at"])
    op.create_index("ix_stored_completions_created_at", "stored_completions", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_stored_completions_created_at", table_name="stored_completions")
    op.drop_index("ix_stored_completions_key_id_created_at", table_name="stored_completions")
    op.drop_table("stored_completions")
    # SQLite refuses to drop a column an index still names.
    op.drop_index("ix_requests_key_id_created_at", table_name="requests")
    op.drop_column("requests", "key_id")
    op.drop_index("ix_api_keys_prefix", table_name="api_keys")
    op.drop_table("api_keys")
