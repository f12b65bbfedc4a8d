"""The incident table as probewatch wrote it before migrations (SQLite stores of that age are stamped here).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "incidents",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("generation_id", sa.Text, nullable=False),
        sa.Column("probe", sa.Text, nullable=False),
        sa.Column("behaviour", sa.Text, nullable=False),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("threshold", sa.Float, nullable=False),
        sa.Column("aggregation", sa.Text, nullable=False, server_default=""),
        sa.Column("token_scores", sa.Text, nullable=False, server_default="[]"),
        sa.Column("prompt", sa.Text),
        sa.Column("response", sa.Text),
        sa.Column("model_fingerprint", sa.Text, nullable=False),
        sa.Column("bundle_version", sa.Text, nullable=False),
        sa.Column("generation_status", sa.Text, nullable=False, server_default="closed"),
        sa.Column("early", sa.Boolean(create_constraint=False), nullable=False, server_default="0"),
        sa.Column("metadata", sa.Text, nullable=False, server_default="{}"),
        sa.Column("status", sa.Text, nullable=False, server_default="open"),
        sa.Column("updated_at", sa.Text, nullable=False),
        sa.Column("note", sa.Text, nullable=False, server_default=""),
        sa.CheckConstraint("status IN ('open', 'acknowledged', 'resolved')", name="incidents_status_check"),
    )
    op.create_index("incidents_probe", "incidents", ["probe"])
    op.create_index("incidents_status", "incidents", ["status"])
    op.create_index("incidents_generation", "incidents", ["generation_id"])


def downgrade() -> None:
    op.drop_table("incidents")
