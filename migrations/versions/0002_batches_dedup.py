"""Upload batches; one complete document per (agent, sha256); listing index.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "upload_batches",
        sa.Column("id", sa.Uuid(), primary_key=True),
        sa.Column(
            "owner_id", sa.Uuid(), sa.ForeignKey("owners.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column(
            "agent_id", sa.Uuid(), sa.ForeignKey("agents.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("files", sa.Integer(), nullable=False),
        sa.Column("rejected", postgresql.JSONB(), nullable=False, server_default="[]"),
        sa.Column(
            "created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
    )
    op.create_index("ix_upload_batches_owner_id", "upload_batches", ["owner_id"])
    op.create_index("ix_upload_batches_agent_id", "upload_batches", ["agent_id"])
    op.create_index(
        "uq_documents_agent_sha256_complete",
        "documents",
        ["agent_id", "sha256"],
        unique=True,
        postgresql_where=sa.text("status = 'complete'"),
    )
    op.create_index("ix_documents_agent_created", "documents", ["agent_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_documents_agent_created", "documents")
    op.drop_index("uq_documents_agent_sha256_complete", "documents")
    op.drop_table("upload_batches")
