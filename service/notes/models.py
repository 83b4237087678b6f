"""The notes table, and its counts."""

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Identity,
    Index,
    Table,
    Text,
    false,
    func,
)

from service.database.models import metadata

TEXT_MAX_LENGTH = 10_000

# `version` rises by one on every update and backs the ETag. Both timestamps are the
# database's: a default on insert, a trigger on update.
notes = Table(
    "notes",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("text", Text, nullable=False),
    Column("completed", Boolean, nullable=False, server_default=false()),
    Column("version", BigInteger, nullable=False, server_default="1"),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    Column("updated_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(f"char_length(text) BETWEEN 1 AND {TEXT_MAX_LENGTH}", name="text_length"),
    # Serves the filtered list (completed = ? AND id > ? ORDER BY id).
    Index(None, "completed", "id"),
)

# The notes' counts as written: a row of net changes per writing statement, added by triggers
# on notes in the write's own transaction, folded into one by the app every second
# (migrations/versions/2026-12-06_count_notes_as_written.py, service.notes.counts).
note_count_deltas = Table(
    "note_count_deltas",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("total", BigInteger, nullable=False),
    Column("completed", BigInteger, nullable=False),
)
