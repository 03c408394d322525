"""Create deployments.

One row per `aana up` run, so `aana status` can say what ran, from which spec, where, and how it ended.

Revision ID: 0001
Revises: (none)
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deployments",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("app_name", sa.String(200), nullable=False),
        # The whole spec as written, and its sha256, so two runs of the same file can be told apart from an edit.
        sa.Column("spec_text", sa.Text(), nullable=False),
        sa.Column("spec_hash", sa.String(64), nullable=False),
        sa.Column("ray_address", sa.String(500), nullable=True),
        sa.Column("base_url", sa.String(500), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_deployments"),
    )


def downgrade() -> None:
    op.drop_table("deployments")
