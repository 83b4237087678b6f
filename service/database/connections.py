"""The per-process database: engine, session factory and the dependencies that hand them out.

Everything here is built inside the lifespan of one worker process and disposed when it ends.
An engine made at import time would be inherited by every forked worker, and two processes
sharing one asyncpg socket corrupt each other's protocol state.
"""

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from service.config import Settings
from service.exceptions import DomainError
from service.observability.metrics import (
    POOL_IDLE,
    POOL_IN_USE,
    POOL_MAX,
    POOL_OVERFLOW,
    POOL_TIMEOUTS,
    POOL_WAIT,
    POOL_WAITING,
)


@dataclass(slots=True)
class Database:
    """One worker's engine, its autocommit view for reads, and its session factory.

    Every checkout passes a FIFO gate sized to the pool. SQLAlchemy's async pool hands a
    returned connection to whichever task asks first, so under load newcomers overtake
    tasks already waiting and a few requests wait for seconds; the gate serves them in
    arrival order and bounds the wait by `pool_timeout`.
    """

    engine: AsyncEngine
    autocommit: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    capacity: int
    pool_timeout: float
    _gate: asyncio.Semaphore = field(init=False)
    _multi_checkout: asyncio.Lock = field(init=False)
    _in_use: int = field(init=False, default=0)
    _waiting: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._gate = asyncio.Semaphore(self.capacity)
        # Only one task at a time may gather several connections; otherwise two such tasks
        # could each hold one and wait forever for the other's.
        self._multi_checkout = asyncio.Lock()
        POOL_MAX.set(self.capacity)

    async def _acquire(self, count: int) -> int:
        acquired = 0
        try:
            async with asyncio.timeout(self.pool_timeout):
                if count == 1:
                    await self._gate.acquire()
                    acquired = 1
                else:
                    async with self._multi_checkout:
                        for _ in range(count):
                            await self._gate.acquire()
                            acquired += 1
        except TimeoutError:
            for _ in range(acquired):
                self._gate.release()
            POOL_TIMEOUTS.inc()
            msg = f"no database connection free within {self.pool_timeout:g}s"
            raise PoolTimeoutError(msg) from None
        return acquired

    @asynccontextmanager
    async def _checkout(self, count: int = 1) -> AsyncIterator[None]:
        started = time.perf_counter()
        if self._gate.locked() or count > 1:
            self._waiting += 1
            POOL_WAITING.set(self._waiting)
            try:
                acquired = await self._acquire(count)
            finally:
                self._waiting -= 1
                POOL_WAITING.set(self._waiting)
        else:
            acquired = await self._acquire(count)
        POOL_WAIT.observe(time.perf_counter() - started)
        self._in_use += acquired
        POOL_IN_USE.set(self._in_use)
        try:
            yield
        finally:
            for _ in range(acquired):
                self._gate.release()
            self._in_use -= acquired
            POOL_IN_USE.set(self._in_use)

    def sample_pool(self) -> None:
        """Record how many open connections sit idle in the pool, and how many overflow."""
        pool = self.engine.pool
        POOL_IDLE.set(pool.checkedin())  # type: ignore[attr-defined]
        # QueuePool counts overflow from -pool_size while the pool is not yet full.
        POOL_OVERFLOW.set(max(0, pool.overflow()))  # type: ignore[attr-defined]

    @asynccontextmanager
    async def read_connection(self) -> AsyncIterator[AsyncConnection]:
        """An autocommit connection: a single-statement read pays no BEGIN/ROLLBACK."""
        async with (
            self._checkout(),
            self.autocommit.connect() as connection,
            _discarded_on_failure(connection),
        ):
            yield connection

    @asynccontextmanager
    async def read_connections(self, count: int) -> AsyncIterator[list[AsyncConnection]]:
        """`count` autocommit connections at once, for queries that run concurrently."""
        async with self._checkout(count), AsyncExitStack() as stack:
            connections = [
                await stack.enter_async_context(self.autocommit.connect()) for _ in range(count)
            ]
            for connection in connections:
                await stack.enter_async_context(_discarded_on_failure(connection))
            yield connections

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncSession]:
        """A session in a transaction, committed when the block ends; rolled back if it
        raises a domain error, and its connection discarded if it fails in any other way."""
        async with (
            self._checkout(),
            self.sessionmaker() as session,
            session.begin(),
            _discarded_on_failure(session),
        ):
            yield session

    async def dispose(self) -> None:
        """Close every pooled connection of this process."""
        await self.engine.dispose()


@asynccontextmanager
async def _discarded_on_failure(holder: AsyncConnection | AsyncSession) -> AsyncIterator[None]:
    """Discard the connection under `holder` if the block fails with anything but a domain
    error, so that no later request inherits a connection in a state nobody can vouch for.

    A driver that fails mid-exchange leaves such a state: asyncpg sends Parse and Describe,
    then refuses to encode a parameter and never sends Sync, so the statement timer PostgreSQL
    armed for that statement fires later and cancels an unrelated request's statement. A
    cancelled statement, a timeout or a lost connection are no better. A reconnect costs a few
    milliseconds, and failures are rare.
    """
    try:
        yield
    except DomainError:
        raise
    except BaseException:
        await holder.invalidate()
        raise


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
    # Reads run in autocommit: asyncpg sends no BEGIN/ROLLBACK, and the connection goes back
    # to the pool with nothing to reset.
    autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
    return Database(
        engine=engine,
        autocommit=autocommit,
        sessionmaker=async_sessionmaker(engine, expire_on_commit=False),
        capacity=settings.db_pool_size + settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
    )


async def get_database(request: Request) -> Database:
    """The database of the process serving this request (lifespan state)."""
    database: Database = request.state.database
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]
