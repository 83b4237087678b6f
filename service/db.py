"""The per-process database: engine, session factory and the dependencies that hand them out.

Everything here is built inside the lifespan of one worker process and disposed when it ends.
An engine made at import time would be inherited by every forked worker, and two processes
sharing one asyncpg socket corrupt each other's protocol state.
"""

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from service.config import Settings


@dataclass(frozen=True, slots=True)
class Database:
    """One worker's engine, its autocommit view for reads, and its session factory."""

    engine: AsyncEngine
    autocommit: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]

    async def dispose(self) -> None:
        """Close every pooled connection of this process."""
        await self.engine.dispose()


def create_database(settings: Settings) -> Database:
    """Build the engine and session factory for this process; opens no connection yet."""
    engine = create_async_engine(
        settings.sqlalchemy_url,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        pool_pre_ping=settings.db_pool_pre_ping,
        connect_args={
            "timeout": settings.db_connect_timeout,
            "server_settings": {
                # The pid tells which worker holds a connection in pg_stat_activity.
                "application_name": f"notes-service:{os.getpid()}",
                "statement_timeout": str(int(settings.db_statement_timeout * 1000)),
                # Millisecond queries never gain from JIT; it only adds planning time.
                "jit": "off",
            },
        },
    )
    # A single-statement read needs no BEGIN/ROLLBACK round trips: asyncpg runs it in
    # autocommit, and the connection goes back to the pool with nothing to reset.
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    return Database(engine=engine, autocommit=autocommit, sessionmaker=sessionmaker)


def get_database(request: Request) -> Database:
    """The database of the process serving this request (lifespan state)."""
    database: Database = request.state.database
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]


async def get_session(database: DatabaseDep) -> AsyncIterator[AsyncSession]:
    """A session for one request's writes; the caller opens the transaction."""
    async with database.sessionmaker() as session:
        yield session


async def get_read_connection(database: DatabaseDep) -> AsyncIterator[AsyncConnection]:
    """An autocommit connection for one request's reads."""
    async with database.autocommit.connect() as connection:
        yield connection


SessionDep = Annotated[AsyncSession, Depends(get_session)]
ReadConnectionDep = Annotated[AsyncConnection, Depends(get_read_connection)]
