"""Each document records what made its vectors: `embedding_precision` (float32, bfloat16,
int8, or mixed) and `embedding_model`, so that the documents of another precision or model
can be found after a switch. Rows stored before are NULL: unknown.

Nullable columns without a default: PostgreSQL adds them without rewriting the table, however
many documents there are (it waits for the table's lock behind the transactions in progress,
a large document's store included).

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("documents", sa.Column("embedding_precision", sa.String(20), nullable=True))
    op.add_column("documents", sa.Column("embedding_model", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("documents", "embedding_model")
    op.drop_column("documents", "embedding_precision")
