"""Counting an agent's documents (the `total` of its list) and summing its chunks (every search
plans with it) read the agent's documents index alone: it now holds `chunk_count` too.

At a million documents in one agent, each page of the list counted them in ~290 ms and each
search summed their chunks in ~220 ms, reading every row of the table; from the index alone,
~135 ms. Built and dropped CONCURRENTLY: documents keep being written meanwhile (a plain
CREATE INDEX blocks every upload's store for as long as the build takes). A build that fails
leaves an INVALID index of that name: drop it, then migrate again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_documents_agent_status_chunks",
            "documents",
            ["agent_id", "status"],
            postgresql_include=["chunk_count"],
            postgresql_concurrently=True,
        )
        op.drop_index(
            "ix_documents_agent_status", table_name="documents", postgresql_concurrently=True
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_documents_agent_status",
            "documents",
            ["agent_id", "status"],
            postgresql_concurrently=True,
        )
        op.drop_index(
            "ix_documents_agent_status_chunks",
            table_name="documents",
            postgresql_concurrently=True,
        )
