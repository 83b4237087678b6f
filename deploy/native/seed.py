"""`make seed ROWS=N`: N notes added to the running stack's database, fast, with progress.

One `INSERT ... SELECT FROM generate_series` per batch of a million rows, each its own
transaction (the counts' trigger adds one row per batch), as the app role the workers log in
as. About a third of the notes are completed, and their texts differ. ANALYZE after, so the
planner knows the table's new size.
"""

import asyncio
import time

import asyncpg

from deploy.native.processes import fail, log
from service.database.urls import asyncpg_dsn

BATCH = 1_000_000
_INSERT = """
INSERT INTO notes (text, completed)
SELECT 'seeded note ' || n, n % 3 = 0 FROM generate_series($1::bigint, $2::bigint) AS n
"""


async def seed(database_url: str, rows: int, batch_size: int = BATCH) -> None:
    """Add `rows` notes to the database `database_url` names, `batch_size` per statement."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url), statement_cache_size=0)
    try:
        started = time.monotonic()
        done = 0
        while done < rows:
            batch = min(batch_size, rows - done)
            await connection.execute(_INSERT, done + 1, done + batch)
            done += batch
            elapsed = time.monotonic() - started
            log(f"seed: {done:,} / {rows:,} notes ({done / elapsed:,.0f} a second)")
        await connection.execute("ANALYZE notes")
        total = int(await connection.fetchval("SELECT sum(total) FROM note_count_deltas") or 0)
        log(f"seed: done in {time.monotonic() - started:.1f}s; the table holds {total:,} notes")
    finally:
        await connection.close()


def run(database_url: str, rows: int, batch_size: int = BATCH) -> None:
    """`seed`, failing with a message on a bad count or a database error."""
    if rows < 1 or batch_size < 1:
        fail(f"ROWS={rows}, batch {batch_size}: seed at least one note, in batches of one or more")
    try:
        asyncio.run(seed(database_url, rows, batch_size))
    except (OSError, asyncpg.PostgresError) as exc:
        fail(f"seed failed: {exc}")
