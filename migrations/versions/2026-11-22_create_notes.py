"""Create the notes table, its list index and the trigger that keeps updated_at and version.

Revision ID: 0001_create_notes
Revises:
Create Date: 2026-11-22 00:00:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_create_notes"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "notes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=True), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("completed", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("version", sa.BigInteger(), server_default="1", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.CheckConstraint(
            "char_length(text) BETWEEN 1 AND 10000", name=op.f("ck_notes_text_length")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notes")),
    )
    op.create_index(op.f("ix_notes_completed_id"), "notes", ["completed", "id"])
    # Every UPDATE, whoever issues it, moves updated_at and version: the ETag can never
    # stay the same across a change.
    op.execute(
        """
        CREATE FUNCTION notes_touch() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := now();
            NEW.version := OLD.version + 1;
            RETURN NEW;
        END
        $$
        """
    )
    op.execute(
        "CREATE TRIGGER notes_touch BEFORE UPDATE ON notes "
        "FOR EACH ROW EXECUTE FUNCTION notes_touch()"
    )


def downgrade() -> None:
    """Revert this revision."""
    op.execute("DROP TRIGGER notes_touch ON notes")
    op.execute("DROP FUNCTION notes_touch()")
    op.drop_index(op.f("ix_notes_completed_id"), table_name="notes")
    op.drop_table("notes")
