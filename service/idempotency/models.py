"""The table of idempotency keys and the outcomes stored with them."""

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Index,
    LargeBinary,
    SmallInteger,
    Table,
    Text,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB

from service.database.models import metadata

KEY_MAX_LENGTH = 255

# A key a client sent with a write, what the request was, and what it was answered. The row
# is written in the transaction of the write itself: it exists exactly when the write
# committed. `status` is null only inside that transaction, never to other readers.
idempotency_keys = Table(
    "idempotency_keys",
    metadata,
    Column("key", Text, primary_key=True),
    # SHA-256 of the method, path, If-Match and body: a retry must send the same request.
    Column("fingerprint", LargeBinary, nullable=False),
    Column("status", SmallInteger),
    Column("headers", JSONB),
    Column("body", LargeBinary),
    Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
    CheckConstraint(f"char_length(key) BETWEEN 1 AND {KEY_MAX_LENGTH}", name="key_length"),
    # The cleanup deletes the oldest first.
    Index(None, "created_at"),
)
