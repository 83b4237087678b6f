"""The per-process database: SQLAlchemy's engine owns the pool; statements run on asyncpg.

Everything here is built inside the lifespan of one worker process and disposed when it ends.
An engine made at import time would be inherited by every forked worker, and two processes
sharing one asyncpg socket corrupt each other's protocol state.

SQLAlchemy's engine and pool own every connection: they open, recycle, invalidate and count
them. What runs on a checked-out connection is asyncpg itself, with statements compiled once
from SQLAlchemy Core (`service.database.statements`): SQLAlchemy's execution layer (cursor
adaptation, result processing, a greenlet switch per statement) cost a read about as much as
everything else in it together, measured with py-spy under wrk (docs/performance.md).
"""

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import Depends, Request
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import AsyncAdaptedQueuePool, PoolProxiedConnection
from sqlalchemy.util import await_only, greenlet_spawn

from service.config import Settings
from service.deadlines import Deadlines
from service.exceptions import DomainError
from service.observability.metrics import POOL_TIMEOUTS, POOL_WAIT, POOL_WAITING
from service.stack.engines import PGBOUNCER_SAFE_ASYNCPG, UNAVAILABLE_SQLSTATE_CLASSES


class DatabaseUnavailableError(Exception):
    """The database cannot serve now: no connection within the pool timeout or the connect
    timeout, the connection lost, or PostgreSQL refusing for want of resources, at an
    operator's word or past the statement timeout. The one exception the rest of the app
    sees for it (`Database` raises it, from the driver's or the pool's own error); the HTTP
    edge answers it 503 with Retry-After."""


def _unavailable(exc: Exception, driver: asyncpg.Connection) -> bool:
    """Whether `exc`, raised while `driver` ran a statement, means the database cannot serve
    now; anything else (a constraint, a parameter the driver cannot encode) is a bug."""
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "").startswith(UNAVAILABLE_SQLSTATE_CLASSES)
    return isinstance(exc, OSError | TimeoutError) or driver.is_closed()


@dataclass(slots=True)
class Database:
    """One worker's engine, and the connections it hands out.

    Every checkout passes a FIFO gate sized to the pool. SQLAlchemy's async pool hands a
    returned connection to whichever task asks first, so under load newcomers overtake
    tasks already waiting and a few requests wait for seconds; the gate serves them in
    arrival order and bounds the wait by `pool_timeout`.
    """

    engine: Engine
    capacity: int
    pool_timeout: float
    _gate: asyncio.Semaphore = field(init=False)
    _deadlines: Deadlines = field(init=False, default_factory=Deadlines)
    _waiting: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self._gate = asyncio.Semaphore(self.capacity)

    async def _acquire(self) -> None:
        try:
            with self._deadlines.after(self.pool_timeout):
                await self._gate.acquire()
        except TimeoutError:
            POOL_TIMEOUTS.inc()
            msg = f"no database connection free within {self.pool_timeout:g}s"
            raise DatabaseUnavailableError(msg) from None

    async def _checkout(self) -> None:
        """Pass the gate: at once while it has room, else in arrival order, for at most
        `pool_timeout`."""
        started = time.perf_counter()
        if self._gate.locked():
            self._waiting += 1
            try:
                await self._acquire()
            finally:
                self._waiting -= 1
        else:
            # Room at the gate: the semaphore is taken without waiting, and needs no timer.
            await self._gate.acquire()
        POOL_WAIT.observe(time.perf_counter() - started)

    def _checkin(self) -> None:
        self._gate.release()

    def sample_waiting(self) -> None:
        """Record the requests waiting at the gate now. The pool's own gauges (in use, idle,
        overflow, max) are the stack's, sampled from every engine (`service.stack.engines`)."""
        POOL_WAITING.set(self._waiting)

    def connection(self) -> AbstractAsyncContextManager[asyncpg.Connection]:
        """A pooled connection, in autocommit: a single statement pays no BEGIN/COMMIT."""
        return _PooledConnection(self)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[asyncpg.Connection]:
        """A pooled connection in a transaction, committed when the block ends; rolled back
        if it raises a domain error, and the connection discarded on any other failure."""
        async with self.connection() as connection, connection.transaction():
            yield connection

    async def dispose(self) -> None:
        """Close every pooled connection of this process."""
        await greenlet_spawn(self.engine.dispose)


class _PooledConnection:
    """One checkout, as an async context manager: through the gate, then SQLAlchemy's pool;
    back to both at the end, or the connection discarded after a failure.

    A class rather than generator-based context managers: a checkout is on the path of
    every request, and each generator layer costs it a frame and a step in and out.
    """

    __slots__ = ("_database", "_pooled")

    def __init__(self, database: Database) -> None:
        self._database = database

    async def __aenter__(self) -> asyncpg.Connection:
        database = self._database
        await database._checkout()
        try:
            # Checkout and checkin may connect or close: awaits inside SQLAlchemy's sync pool.
            self._pooled: PoolProxiedConnection = await greenlet_spawn(
                database.engine.raw_connection
            )
        except BaseException as exc:
            database._checkin()
            if isinstance(exc, Exception):
                # Refused, shutting down, starting up, out of slots: whatever the driver
                # calls it.
                raise DatabaseUnavailableError(str(exc)) from exc
            raise
        driver: asyncpg.Connection = self._pooled.driver_connection
        return driver

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        pooled = self._pooled
        try:
            if exc is not None and not isinstance(exc, DomainError):
                # A driver that fails mid-exchange leaves the connection in a state nobody
                # can vouch for: asyncpg sends Parse and Describe, then refuses to encode a
                # parameter and never sends Sync, so the statement timer PostgreSQL armed
                # fires later and cancels an unrelated request's statement. A cancelled
                # statement, a timeout or a lost connection are no better. A reconnect costs
                # a few milliseconds.
                driver = pooled.driver_connection
                await greenlet_spawn(pooled.invalidate)
                if isinstance(exc, Exception) and _unavailable(exc, driver):
                    raise DatabaseUnavailableError(str(exc)) from exc
        finally:
            await greenlet_spawn(pooled.close)
            self._database._checkin()


def create_database(settings: Settings) -> Database:
    """Build the engine and its pool for this process; opens no connection yet.

    The engine is SQLAlchemy's plain `Engine` on the asyncpg dialect with the asyncio-aware
    pool: everything `create_async_engine` builds but the `AsyncEngine` wrapper, whose module
    brings in the ORM. Pool calls that connect or close run inside `greenlet_spawn`.
    """
    connect_args: dict[str, object] = {
        "timeout": settings.db_connect_timeout,
        "server_settings": {
            # The pid tells which worker holds a connection in pg_stat_activity.
            "application_name": f"{settings.stack_name}:{os.getpid()}",
            "statement_timeout": str(int(settings.db_statement_timeout * 1000)),
            # Millisecond queries never gain from JIT; it only adds planning time.
            "jit": "off",
        },
    }
    if settings.db_pooler != "none":
        # The same arguments the stack gives every app's asyncpg engine behind PgBouncer; set
        # here too, for an engine made outside a worker (migrations, benchmarks, tests).
        connect_args |= PGBOUNCER_SAFE_ASYNCPG
    engine = create_engine(
        settings.sqlalchemy_url,
        poolclass=AsyncAdaptedQueuePool,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
        pool_recycle=settings.db_pool_recycle,
        pool_pre_ping=settings.db_pool_pre_ping,
        # Statements run in autocommit or in a transaction they end themselves: a returned
        # connection has nothing to roll back.
        pool_reset_on_return=None,
        connect_args=connect_args,
    )
    event.listen(engine, "connect", _register_codecs)
    return Database(
        engine=engine,
        capacity=settings.db_pool_size + settings.db_max_overflow,
        pool_timeout=settings.db_pool_timeout,
    )


def _register_codecs(dbapi_connection: Any, _record: object) -> None:
    """On every new connection: jsonb to and from Python objects, with orjson.

    The idempotency store keeps each response's headers as jsonb and passes and reads them as
    dicts. SQLAlchemy's asyncpg dialect registers a jsonb codec of its own when it connects;
    the store relies on this one, registered after it, not on the dialect's choice.
    """
    driver: asyncpg.Connection = dbapi_connection.driver_connection
    await_only(
        driver.set_type_codec(
            "jsonb", schema="pg_catalog", encoder=_json_text, decoder=orjson.loads, format="text"
        )
    )


def _json_text(value: object) -> str:
    return orjson.dumps(value).decode()


async def get_database(request: Request) -> Database:
    """The database of the process serving this request (lifespan state)."""
    database: Database = request.state.database
    return database


DatabaseDep = Annotated[Database, Depends(get_database)]
