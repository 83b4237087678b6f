"""How big the database under load was, for the sweep's report and its capacity plan.

Read once at the end of a sweep from the database the stack's workers use: its size, the
largest tables with their estimated rows, and PostgreSQL's `shared_buffers`. A plan measured
on ten thousand rows says nothing of ten million: the report names the size it was measured
at, and whether the database fitted in PostgreSQL's own cache.
"""

import asyncio
from dataclasses import dataclass

import asyncpg

from service.database.urls import asyncpg_dsn

_TABLES = """
SELECT c.relname AS name, greatest(c.reltuples, 0)::bigint AS rows,
       pg_total_relation_size(c.oid) AS bytes
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
ORDER BY bytes DESC LIMIT 3
"""


@dataclass(frozen=True)
class DatabaseSize:
    """The database's size, its largest tables, and PostgreSQL's buffer cache."""

    bytes: int
    tables: tuple[tuple[str, int, int], ...]  # name, estimated rows, bytes with indexes
    shared_buffers: int

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


async def _read(database_url: str) -> DatabaseSize:
    connection = await asyncpg.connect(
        asyncpg_dsn(database_url), statement_cache_size=0, timeout=10
    )
    try:
        total = await connection.fetchval("SELECT pg_database_size(current_database())")
        tables = await connection.fetch(_TABLES)
        buffers = await connection.fetchval(
            "SELECT setting::bigint * pg_size_bytes(unit) FROM pg_settings "
            "WHERE name = 'shared_buffers'"
        )
    finally:
        await connection.close()
    return DatabaseSize(
        bytes=int(total),
        tables=tuple((row["name"], int(row["rows"]), int(row["bytes"])) for row in tables),
        shared_buffers=int(buffers),
    )


def database_size(database_url: str) -> DatabaseSize | None:
    """The database's size, or None when it cannot be read (the report says so)."""
    try:
        return asyncio.run(_read(database_url))
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return None
