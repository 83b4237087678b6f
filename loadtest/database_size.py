"""How big the database under load was, for the sweep's report and its capacity plan.

Read once at the end of a sweep from the database the stack's workers use: its size, the
largest tables with their estimated rows, its indexes, PostgreSQL's `shared_buffers`, and the
share of the sweep's block reads that `shared_buffers` served (from `pg_stat_database`, read
at the start and at the end). A plan measured on ten thousand rows says nothing of ten
million: the report names the size it was measured at, and the plan whether the load's
working set fitted in PostgreSQL's own cache.
"""

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import asyncpg

from service.database.urls import asyncpg_dsn

T = TypeVar("T")

_TABLES = """
SELECT c.relname AS name, greatest(c.reltuples, 0)::bigint AS rows,
       pg_total_relation_size(c.oid) AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY bytes DESC LIMIT 3
"""


_INDEXES = """
SELECT coalesce(sum(pg_indexes_size(c.oid)), 0)::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
"""
_BLOCKS = "SELECT blks_hit, blks_read FROM pg_stat_database WHERE datname = current_database()"
# At or above this share of block reads served from shared_buffers, the working set fitted.
FITTED = 0.99


@dataclass(frozen=True)
class BufferReads:
    """The database's block reads so far: served from shared_buffers, and not."""

    hits: int
    reads: int

    def hit_ratio_since(self, earlier: "BufferReads") -> float | None:
        """The share of the block reads since `earlier` that shared_buffers served."""
        hits, reads = self.hits - earlier.hits, self.reads - earlier.reads
        return hits / (hits + reads) if hits + reads > 0 else None


@dataclass(frozen=True)
class DatabaseSize:
    """The database's size, its largest tables, and PostgreSQL's buffer cache."""

    bytes: int
    tables: tuple[tuple[str, int, int], ...]  # name, estimated rows, bytes with indexes
    shared_buffers: int
    index_bytes: int = 0
    blocks: BufferReads | None = None  # at the end of the load
    hit_ratio: float | None = None  # over the load, once `during` has been applied

    def during(self, started: BufferReads | None) -> "DatabaseSize":
        """This size, with the hit ratio of the block reads since `started`."""
        if started is None or self.blocks is None:
            return self
        return dataclasses.replace(self, hit_ratio=self.blocks.hit_ratio_since(started))

    def working_set(self) -> str:
        """Whether the load's reads fitted in shared_buffers, for the capacity plan."""
        buffers, indexes = _size(self.shared_buffers), _size(self.index_bytes)
        if self.hit_ratio is None:
            return f"how many of its reads shared_buffers ({buffers}) served is unknown"
        if self.hit_ratio >= FITTED:
            return (
                f"shared_buffers ({buffers}) served {self.hit_ratio:.1%} of its block reads: "
                f"the load's working set fitted, and this cost holds while it does (its "
                f"indexes, which every request walks, are {indexes})"
            )
        return (
            f"shared_buffers ({buffers}) served only {self.hit_ratio:.1%} of its block reads: "
            f"the working set outgrew it, and this cost grows with the data; give PostgreSQL "
            f"at least its indexes ({indexes}) in shared_buffers and the rest in the OS's "
            "page cache"
        )

    def describe(self) -> str:
        """One sentence for the report."""
        tables = ", ".join(
            f"{name} ≈ {rows:,} rows ({_size(size)})" for name, rows, size in self.tables
        )
        times = self.bytes / self.shared_buffers
        cache = (
            "fits in PostgreSQL's shared_buffers"
            if times <= 1
            else f"is {times:.1f} times PostgreSQL's shared_buffers: reads past it come from "
            "the OS's page cache or the disk, so size the database host's memory to the part "
            "the load reads, not to these figures alone"
        )
        return (
            f"Measured on a database of {_size(self.bytes)} ({tables or 'no tables'}); "
            f"shared_buffers {_size(self.shared_buffers)}: the database {cache}."
        )


def _size(count: int) -> str:
    size = float(count)
    for unit in ("bytes", "kB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,.0f} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024
    return f"{size:,.1f} TB"  # unreachable: GB is the last unit


async def _measured(connection: asyncpg.Connection) -> DatabaseSize:
    total = await connection.fetchval("SELECT pg_database_size(current_database())")
    tables = await connection.fetch(_TABLES)
    buffers = await connection.fetchval(
        "SELECT setting::bigint * pg_size_bytes(unit) FROM pg_settings "
        "WHERE name = 'shared_buffers'"
    )
    return DatabaseSize(
        bytes=int(total),
        tables=tuple((row["name"], int(row["rows"]), int(row["bytes"])) for row in tables),
        shared_buffers=int(buffers),
        index_bytes=int(await connection.fetchval(_INDEXES)),
        blocks=await _blocks(connection),
    )


async def _blocks(connection: asyncpg.Connection) -> BufferReads:
    row = await connection.fetchrow(_BLOCKS)
    return BufferReads(hits=int(row["blks_hit"]), reads=int(row["blks_read"]))


def _read(database_url: str, read: Callable[[asyncpg.Connection], Awaitable[T]]) -> T | None:
    """What `read` finds on one connection to `database_url`; None when it cannot be read."""

    async def on_a_connection() -> T:
        connection = await asyncpg.connect(
            asyncpg_dsn(database_url), statement_cache_size=0, timeout=10
        )
        try:
            return await read(connection)
        finally:
            await connection.close()

    try:
        return asyncio.run(on_a_connection())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None


def buffer_reads(database_url: str) -> BufferReads | None:
    """The database's block reads so far, or None when they cannot be read."""
    return _read(database_url, _blocks)


def database_size(database_url: str) -> DatabaseSize | None:
    """The database's size, or None when it cannot be read (the report says so)."""
    return _read(database_url, _measured)
