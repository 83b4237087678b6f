"""The notes table."""

from datetime import datetime

from sqlalchemy import BigInteger, CheckConstraint, DateTime, Identity, Index, Text, false, func
from sqlalchemy.orm import Mapped, mapped_column

from service.database.models import Base

TEXT_MAX_LENGTH = 10_000


class Note(Base):
    """A note. `version` rises by one on every update and backs the ETag."""

    __tablename__ = "notes"
    __table_args__ = (
        CheckConstraint(f"char_length(text) BETWEEN 1 AND {TEXT_MAX_LENGTH}", name="text_length"),
        # Serves the filtered list (completed = ? AND id > ? ORDER BY id) and the stats counts.
        Index(None, "completed", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    completed: Mapped[bool] = mapped_column(server_default=false())
    version: Mapped[int] = mapped_column(BigInteger, server_default="1")
    # Both timestamps are the database's: a default on insert, a trigger on update.
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
