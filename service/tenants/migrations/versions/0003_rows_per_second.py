"""Per-tenant rows-per-second limits: tenants.rows_per_second and the row_limits table.

A request-rate limit lets one request carry a whole batch (up to DYNANOISE_MAX_BATCH
near-duplicate rows); this limit counts the rows themselves. NULL = unlimited, so
existing tenants keep their behaviour.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("tenants", sa.Column("rows_per_second", sa.Float(), nullable=True))
    op.create_table(
        "row_limits",
        sa.Column("tenant", sa.String(length=63), nullable=False),
        sa.Column("tat", sa.Float(), nullable=False),
        sa.Column("interval_seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", name=op.f("pk_row_limits")),
    )


def downgrade() -> None:
    op.drop_table("row_limits")
    # Batch mode: SQLite before 3.35 cannot drop a column in place.
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("rows_per_second")
