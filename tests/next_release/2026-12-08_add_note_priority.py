"""Give notes a priority: the expand step of a release, safe under load.

Adding a column with a constant default changes only the catalogue (PostgreSQL 11 and
later): no rewrite, the lock held for an instant. The index is built concurrently, outside
the migration's transaction: writes go on while it builds. The autocommit block commits the
column first, so a build cut short (its lock wait gave up under MIGRATION_LOCK_TIMEOUT) is
retried with the column already there, and an invalid index of that name behind it: each
statement is written to run again (IF NOT EXISTS, and the index dropped first).

Revision ID: 0004_note_priority
Revises: 0003_count_notes_as_written
Create Date: 2026-12-08 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_note_priority"
down_revision: str | None = "0003_count_notes_as_written"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "notes",
        sa.Column("priority", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        if_not_exists=True,
    )
    with op.get_context().autocommit_block():
        op.drop_index("ix_notes_priority", "notes", if_exists=True, postgresql_concurrently=True)
        op.create_index(
            "ix_notes_priority",
            "notes",
            ["priority", "id"],
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index("ix_notes_priority", "notes", if_exists=True, postgresql_concurrently=True)
    op.drop_column("notes", "priority")
