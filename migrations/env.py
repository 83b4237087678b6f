"""Alembic environment: async engine, URL from the service's Settings, one runner at a time.

Every run takes a PostgreSQL advisory lock before it reads the current revision, so two deploy
steps started together apply each migration once: the second waits, then finds the schema at
head and does nothing.
"""

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from service.config import get_settings
from service.database.models import metadata
from service.idempotency import models as _idempotency_models  # noqa: F401  (registers its table)
from service.notes import models as _notes_models  # noqa: F401  (registers the notes table)

# Any constant bigint works; this one spells "notesmig" in ASCII.
MIGRATION_LOCK_ID = 0x6E6F7465736D6967

target_metadata = metadata

if context.config.config_file_name is not None and context.config.attributes.get(
    "configure_logger", True
):
    fileConfig(context.config.config_file_name, disable_existing_loggers=False)


def run_migrations_offline() -> None:
    """Emit SQL to stdout instead of running it (`alembic upgrade head --sql`)."""
    context.configure(
        url=get_settings().sqlalchemy_url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_locked(connection: Connection) -> None:
    # A session-level lock survives the commit below and is released when the connection
    # closes; committing first leaves Alembic its own transaction to run the migrations in.
    connection.execute(text("SELECT pg_advisory_lock(:lock_id)"), {"lock_id": MIGRATION_LOCK_ID})
    connection.commit()
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_online() -> None:
    """Run the migrations on one connection that holds the migration lock."""
    engine = create_async_engine(get_settings().sqlalchemy_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(_run_locked)
            await connection.commit()
    finally:
        await engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    asyncio.run(run_migrations_online())
