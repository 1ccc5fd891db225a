"""`GET /agents` pages through an owner's agents oldest first: an index in that order, which
also serves the owner foreign key (it replaces the index on owner_id alone).

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_agents_owner_created", "agents", ["owner_id", "created_at", "id"])
    op.drop_index("ix_agents_owner_id", table_name="agents")


def downgrade() -> None:
    op.create_index("ix_agents_owner_id", "agents", ["owner_id"])
    op.drop_index("ix_agents_owner_created", table_name="agents")
