"""The table of idempotency keys and the outcomes stored with them."""

from datetime import datetime
from typing import Any

from sqlalchemy import CheckConstraint, DateTime, Index, LargeBinary, SmallInteger, Text, func
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from service.database.models import Base

KEY_MAX_LENGTH = 255


class IdempotencyKey(Base):
    """A key a client sent with a write, what the request was, and what it was answered.

    The row is written in the transaction of the write itself: it exists exactly when the
    write committed. `status` is null only inside that transaction, never to other readers.
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (
        CheckConstraint(f"char_length(key) BETWEEN 1 AND {KEY_MAX_LENGTH}", name="key_length"),
        # The cleanup deletes the oldest first.
        Index(None, "created_at"),
    )

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    # SHA-256 of the method, path, If-Match and body: a retry must send the same request.
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[int | None] = mapped_column(SmallInteger)
    headers: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
