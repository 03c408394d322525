"""Rename deployments to runs.

"Deployment" now means only a Ray Serve deployment (one model's replicas); one `aana up` is a run. So the table
becomes `runs`, `requests.deployment_id` becomes `run_id`, and the per-run index follows. Every row is kept: these
are renames, not copies, and downgrading renames everything back.

PostgreSQL renames the primary key and the index in place. SQLite can rename neither: its primary key keeps the
name `pk_deployments` inside the table definition (nothing refers to it), and the index is dropped and created
again under its new name. Plain ALTER statements only, so the offline `--sql` output runs without reflecting a table.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    _rename(("deployments", "runs"), ("deployment_id", "run_id"))


def downgrade() -> None:
    _rename(("runs", "deployments"), ("run_id", "deployment_id"))


def _rename(table: tuple[str, str], column: tuple[str, str]) -> None:
    (old_table, new_table), (old_column, new_column) = table, column
    old_index, new_index = (f"ix_requests_{name}_created_at" for name in column)
    op.rename_table(old_table, new_table)
    # Both databases re-point the index at the renamed column.
    op.alter_column("requests", old_column, new_column_name=new_column)
    if op.get_context().dialect.name == "sqlite":
        op.drop_index(old_index, table_name="requests")
        op.create_index(new_index, "requests", [new_column, "created_at"])
    else:
        op.execute(f"ALTER TABLE {new_table} RENAME CONSTRAINT pk_{old_table} TO pk_{new_table}")
        op.execute(f"ALTER INDEX {old_index} RENAME TO {new_index}")
