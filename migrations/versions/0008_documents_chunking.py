"""Each document records the chunking it was stored with (`chunk_size`, `chunk_overlap`): an
upload of the same bytes with another chunking is told that the stored document keeps its
own, and an Idempotency-Key repeated after Temporal's retention is compared on it. Rows
stored before are NULL: unknown.

Nullable columns without a default: PostgreSQL adds them without rewriting the table (as
0007's).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("documents", sa.Column("chunk_size", sa.Integer(), nullable=True))
    op.add_column("documents", sa.Column("chunk_overlap", sa.Integer(), nullable=True))


def downgrade() -> None:
    op.drop_column("documents", "chunk_overlap")
    op.drop_column("documents", "chunk_size")
