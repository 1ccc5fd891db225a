"""The outbox of workflow starts (`task_starts`): an upload is acknowledged once its file is
on the disk and its row is committed here, and its workflow is started after, off the
request's path. The API's dispatcher starts any row left (a start that failed, an API killed
between the answer and the start), so an acknowledged upload is never left unstarted.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "task_starts",
        sa.Column("task_id", sa.String(64), primary_key=True),
        sa.Column(
            "owner_id", sa.Uuid(), sa.ForeignKey("owners.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "agent_id", sa.Uuid(), sa.ForeignKey("agents.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("task_queue", sa.Text(), nullable=False),
        sa.Column("task", postgresql.JSONB(), nullable=False),
        sa.Column(
            "queued_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_task_starts_next_attempt_at", "task_starts", ["next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_task_starts_next_attempt_at", table_name="task_starts")
    op.drop_table("task_starts")
