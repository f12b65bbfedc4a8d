"""Review and fleet: review state + audit trail, generation context, unique (generation, probe).

Revision ID: 0002
Revises: 0001

Stores written before this revision could hold two rows for one (generation, probe) (a
generation id reused after a sidecar restart): the later rows get `#dup<id>` appended to their
generation id, so the unique index holds and nothing is deleted.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

Id = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
REVIEW_COLUMNS = ("label", "severity", "assignee", "labelled_by", "labelled_at", "resolved_at", "writer")


def upgrade() -> None:
    op.execute(
        "UPDATE incidents SET generation_id = generation_id || '#dup' || CAST(id AS TEXT) "
        "WHERE id NOT IN (SELECT MIN(id) FROM incidents GROUP BY generation_id, probe)"
    )
    for name in REVIEW_COLUMNS:
        op.add_column("incidents", sa.Column(name, sa.Text, nullable=True))
    op.drop_index("incidents_status", table_name="incidents")
    op.drop_index("incidents_generation", table_name="incidents")
    # stores written by a build that enforced uniqueness itself already carry this index
    op.create_index(
        "incidents_generation_probe", "incidents", ["generation_id", "probe"], unique=True, if_not_exists=True
    )
    op.create_index("incidents_status_id", "incidents", ["status", "id"])
    op.create_index("incidents_status_created", "incidents", ["status", "created_at"])
    op.create_index("incidents_created", "incidents", ["created_at"])
    op.create_index("incidents_label", "incidents", ["label"])
    op.create_table(
        "generations",
        sa.Column("generation_id", sa.Text, primary_key=True),
        sa.Column("created_at", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Text, nullable=False),
        sa.Column("prompt_length", sa.Integer),
        sa.Column("tokens", sa.Text, nullable=False, server_default="[]"),
        sa.Column("probe_scores", sa.Text, nullable=False, server_default="{}"),
    )
    op.create_table(
        "review_events",
        sa.Column("id", Id, primary_key=True, autoincrement=True),
        sa.Column("incident_id", Id, sa.ForeignKey("incidents.id", ondelete="CASCADE"), nullable=False),
        sa.Column("at", sa.Text, nullable=False),
        sa.Column("reviewer", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("value", sa.Text),
        sa.Column("comment", sa.Text),
    )
    op.create_index("review_events_incident", "review_events", ["incident_id", "id"])
    op.create_table(
        "store_meta",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("store_meta")
    op.drop_index("review_events_incident", table_name="review_events")
    op.drop_table("review_events")
    op.drop_table("generations")
    for name in (
        "incidents_label",
        "incidents_created",
        "incidents_status_created",
        "incidents_status_id",
        "incidents_generation_probe",
    ):
        op.drop_index(name, table_name="incidents")
    op.create_index("incidents_generation", "incidents", ["generation_id"])
    op.create_index("incidents_status", "incidents", ["status"])
    with op.batch_alter_table("incidents") as batch:
        for name in REVIEW_COLUMNS:
            batch.drop_column(name)
