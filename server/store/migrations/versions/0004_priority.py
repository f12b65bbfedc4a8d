"""Incident priority: `normal` (an alert) or `low` (an uncertain result: the score ended inside the probe's
uncertainty band, below its threshold; recorded for review, never alerted).

Revision ID: 0004
Revises: 0003

Rows written before this revision are alerts: they read `normal` (the server default).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("incidents", sa.Column("priority", sa.Text, nullable=False, server_default="normal"))
    op.create_index("incidents_priority_id", "incidents", ["priority", "id"])


def downgrade() -> None:
    op.drop_index("incidents_priority_id", table_name="incidents")
    with op.batch_alter_table("incidents") as batch:
        batch.drop_column("priority")
