"""The notes table."""

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
    # Serves the filtered list (completed = ? AND id > ? ORDER BY id) and the stats counts.
    Index(None, "completed", "id"),
)
