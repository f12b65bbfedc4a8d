"""Token texts: the generation row keeps each scored token's text (under the text policy) and the policy.

Revision ID: 0003
Revises: 0002

Rows written before this revision have neither (NULL): the review app decodes their token ids.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

COLUMNS = ("token_texts", "text_policy")


def upgrade() -> None:
    for name in COLUMNS:
        op.add_column("generations", sa.Column(name, sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("generations") as batch:
        for name in COLUMNS:
            batch.drop_column(name)
