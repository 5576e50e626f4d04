"""Output modes and the repeated-query cap: tenants.output_mode, confidence_buckets and
repeated_queries_per_minute.

Existing tenants keep DynaNoise (output_mode 'dynanoise', the default 4 buckets, which
that mode ignores) and no cap on near-duplicate queries (NULL).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "tenants",
        sa.Column("output_mode", sa.String(length=20), nullable=False, server_default="dynanoise"),
    )
    op.add_column(
        "tenants",
        sa.Column("confidence_buckets", sa.Integer(), nullable=False, server_default="4"),
    )
    op.add_column("tenants", sa.Column("repeated_queries_per_minute", sa.Float(), nullable=True))


def downgrade() -> None:
    # Batch mode: SQLite before 3.35 cannot drop a column in place.
    with op.batch_alter_table("tenants") as batch:
        batch.drop_column("repeated_queries_per_minute")
        batch.drop_column("confidence_buckets")
        batch.drop_column("output_mode")
