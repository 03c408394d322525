"""Add requests.stream and a per-deployment index.

So stats can split streamed from whole responses, and be read per `aana up` run without a scan.

Existing rows keep everything they had and read as not streamed (the server default: older rows did not record
it, and the recorder always sets it). Downgrading drops only the new column and index, so rows written at this revision
survive a round trip down and up again (their stream flag returns as false).

Plain ADD COLUMN / DROP COLUMN rather than a batch table copy: SQLite has both since 3.35, and it keeps the
offline `--sql` output runnable without reflecting the table.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("requests", sa.Column("stream", sa.Boolean(), server_default=sa.false(), nullable=False))
    op.create_index("ix_requests_deployment_id_created_at", "requests", ["deployment_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_requests_deployment_id_created_at", table_name="requests")
    op.drop_column("requests", "stream")
