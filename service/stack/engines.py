"""Every SQLAlchemy engine a process makes, found without the app's help.

SQLAlchemy calls the dialect's `engine_created` hook for every engine `create_engine` (and so
`create_async_engine`) builds, after the engine exists and before the app gets it. The stack
hooks it once per process, before the app is imported, so an engine made at import time (the
FastAPI templates' `engine = create_async_engine(...)` in `db.py`) is seen as well as one made
in a lifespan: the app's engines are those made from just before its import to the end of its
lifespan's startup (one made later, in a request, is not watched). Each engine gets a label
(its `logging_name`, else its database's name; a second engine of the same name gets `-2`),
the worker samples every engine's pool into the `db_pool_connections_*` gauges by that label,
and `/readyz` asks each for a connection.

Engines are held weakly: one the app drops stops being sampled, its gauges set to zero.
"""

import asyncio
import os
import threading
import uuid
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, event, text
from sqlalchemy.util import greenlet_spawn

from service.observability.metrics import POOL_IDLE, POOL_IN_USE, POOL_MAX, POOL_OVERFLOW
from service.stack.every_engine import on_every_engine


@dataclass(frozen=True, slots=True)
class TrackedEngine:
    """An engine the app made: its label, its position among them, and a weak reference."""

    label: str
    serial: int
    ref: Callable[[], Engine | None]


class EngineRegistry:
    """The engines of this process, in the order they were made."""

    def __init__(self) -> None:
        self._engines: list[TrackedEngine] = []
        self._names: Counter[str] = Counter()
        self._lock = threading.Lock()

    def add(self, engine: Engine) -> TrackedEngine:
        """Track `engine` under a label unique in this process."""
        name = engine.logging_name or engine.url.database or engine.url.get_backend_name()
        with self._lock:
            self._names[name] += 1
            label = name if self._names[name] == 1 else f"{name}-{self._names[name]}"
            tracked = TrackedEngine(label, len(self._engines), weakref.ref(engine))
            self._engines.append(tracked)
        return tracked

    def mark(self) -> int:
        """A position in the order engines were made (see `between`)."""
        return len(self._engines)

    def between(self, start: int, end: int | None = None) -> list[tuple[str, Engine]]:
        """The live engines made between the marks `start` and `end` (else now), with their
        labels."""
        live = []
        for tracked in self._engines[start:end]:
            engine = tracked.ref()
            if engine is not None:
                live.append((tracked.label, engine))
        return live

    def sampler(self, engines: Callable[[], list[tuple[str, Engine]]]) -> Callable[[], None]:
        """A function that sets the pool gauges of the `engines()`."""
        sampled: set[str] = set()

        def sample() -> None:
            live = engines()
            for label, engine in live:
                _sample_pool(label, engine.pool)
            gone = sampled - {label for label, _ in live}
            for label in gone:
                for gauge in (POOL_IN_USE, POOL_IDLE, POOL_OVERFLOW, POOL_MAX):
                    gauge.labels(label).set(0)
            sampled.clear()
            sampled.update(label for label, _ in live)

        return sample


def pool_capacity(pool: Any) -> int | None:
    """The most connections `pool` opens at once: its size and overflow for a QueuePool (and
    the asyncio one), 1 for a pool of one connection, None when nothing bounds it (NullPool,
    or an overflow of -1)."""
    size = getattr(pool, "size", None)
    if size is not None:
        overflow = int(getattr(pool, "_max_overflow", 0))
        return None if overflow < 0 else int(size()) + overflow
    if type(pool).__name__ in ("StaticPool", "SingletonThreadPool", "AssertionPool"):
        return 1
    return None


def _sample_pool(label: str, pool: Any) -> None:
    """One pool's connections: in use, idle, beyond its size, and the most it may hold.

    QueuePool (and the asyncio one) counts all four; a pool that keeps nothing (NullPool)
    or one connection (StaticPool) says what it can and zero for the rest.
    """
    checked_out = getattr(pool, "checkedout", None)
    POOL_IN_USE.labels(label).set(checked_out() if checked_out else 0)
    checked_in = getattr(pool, "checkedin", None)
    POOL_IDLE.labels(label).set(checked_in() if checked_in else 0)
    overflow = getattr(pool, "overflow", None)
    POOL_OVERFLOW.labels(label).set(max(0, overflow()) if overflow else 0)
    POOL_MAX.labels(label).set(pool_capacity(pool) or 0)


# SQLSTATE classes that mean "the database cannot serve this now", not "our bug": connection
# exceptions, insufficient resources, operator intervention (the statement timeout, 57014, and
# a server shutting down among them). Readiness and the notes' database layer both decide by
# them.
UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")

REGISTRY = EngineRegistry()
_installed = False


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4()}__"


# Behind PgBouncer in transaction mode (before 1.21), a statement asyncpg prepared by name on
# one server connection is missing from the next the client is given, or its name is taken
# there by another client's. With its cache off, asyncpg prepares each statement unnamed and
# runs it in the same exchange (Parse, Describe, Flush, then Bind, Execute, Sync: PgBouncer
# keeps the server until that Sync's answer), and SQLAlchemy's setup queries name theirs
# uniquely: the asyncpg dialect's documented recipe.
PGBOUNCER_SAFE_ASYNCPG = {
    "statement_cache_size": 0,
    "prepared_statement_cache_size": 0,
    "prepared_statement_name_func": _unique_statement_name,
}


def _adapt_connections(engine: Engine, stack_name: str, pooler: str) -> None:
    """Name every connection `engine` opens `<stack_name>:<pid>` in pg_stat_activity, unless
    the app names them itself: which worker of which deployment holds each one. Behind
    PgBouncer (`pooler`), make an asyncpg engine's connections keep no prepared statements,
    whatever the app asked: the app cannot know what DATABASE_URL reaches."""

    @event.listens_for(engine, "do_connect")
    def adapt(dialect: Any, record: Any, args: Any, params: dict[str, Any]) -> None:
        application_name = f"{stack_name}:{os.getpid()}"
        if dialect.driver == "asyncpg":
            params.setdefault("server_settings", {}).setdefault(
                "application_name", application_name
            )
            if pooler == "pgbouncer":
                params.update(PGBOUNCER_SAFE_ASYNCPG)
        elif dialect.name == "postgresql":
            params.setdefault("application_name", application_name)


def watch_engines(stack_name: str = "notes", pooler: str = "none") -> None:
    """From now on, track every engine made in this process, and adapt its connections to
    this deployment (`_adapt_connections`); idempotent."""
    global _installed  # noqa: PLW0603 (one hook per process, installed once)
    if _installed:
        return

    def watch(engine: Engine) -> None:
        REGISTRY.add(engine)
        _adapt_connections(engine, stack_name, pooler)

    on_every_engine(watch)
    _installed = True


def _ping(connection_owner: Engine) -> None:
    with connection_owner.connect() as connection:
        connection.execute(text("SELECT 1"))


def _schema_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        value = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
    return None if value is None else str(value)


async def run_on(engine: Engine, function: Callable[[Engine], Any]) -> Any:
    """Run blocking SQLAlchemy work on `engine` without blocking the event loop: in a greenlet
    for an async driver (as AsyncEngine does), in a thread for a blocking one."""
    if engine.dialect.is_async:
        return await greenlet_spawn(function, engine)
    return await asyncio.to_thread(function, engine)


async def ping(engine: Engine) -> None:
    """Check out a connection of `engine` and run `SELECT 1` on it."""
    await run_on(engine, _ping)


async def schema_revision(engine: Engine) -> str | None:
    """The Alembic revision the database of `engine` is at."""
    result: str | None = await run_on(engine, _schema_revision)
    return result
