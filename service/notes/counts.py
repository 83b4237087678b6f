"""The notes' counts, kept as they are written (migrations/versions/2026-12-06_count_notes_as_
written.py): each statement that changes them adds a row of net changes; this module sums
them for stats and, in the background, folds them into one row.

Folding keeps the sum's cost at about a second of writes, whatever the table's size: every
second (jittered) each worker tries, and the one that takes the advisory lock replaces every
row it sees by their sum, in one statement. Rows committed meanwhile are not seen, so they
stay, and nothing is counted twice or lost; a reader sees the rows before or the row after.
"""

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator

import structlog
from sqlalchemy import func, select

from service.database.connections import Database, DatabaseUnavailableError
from service.database.statements import compiled
from service.notes.models import note_count_deltas
from service.notes.schemas import NoteStats
from service.observability.timing import record_timing

logger = structlog.get_logger(__name__)

FOLD_INTERVAL_SECONDS = 1.0
# Any constant bigint; this one spells "notecnt" in ASCII.
_FOLD_LOCK_ID = 0x6E6F7465636E74

_SUM = compiled(
    select(
        func.sum(note_count_deltas.c.total).label("total"),
        func.sum(note_count_deltas.c.completed).label("completed"),
    )
)
_FOLD = """
WITH folded AS (DELETE FROM note_count_deltas RETURNING total, completed)
INSERT INTO note_count_deltas (total, completed)
SELECT sum(total), sum(completed) FROM folded HAVING count(*) > 0
"""


async def note_stats(*, database: Database) -> NoteStats:
    """The counts, exact as of the last committed write; one statement sees one snapshot, so
    the three numbers always agree."""
    started = time.perf_counter()
    async with database.connection() as connection:
        row = await connection.fetchrow(_SUM.sql)
    record_timing("db", time.perf_counter() - started)
    total, completed = int(row["total"] or 0), int(row["completed"] or 0)
    return NoteStats(total=total, completed=completed, open=total - completed)


async def fold(*, database: Database) -> bool:
    """Fold the rows into one, unless another worker is doing it; whether this one did."""
    async with database.transaction() as connection:
        if not await connection.fetchval("SELECT pg_try_advisory_xact_lock($1)", _FOLD_LOCK_ID):
            return False
        rows = await connection.fetchval("SELECT count(*) FROM note_count_deltas")
        if rows > 1:
            await connection.execute(_FOLD)
    return True


@contextlib.asynccontextmanager
async def folding(*, database: Database) -> AsyncIterator[None]:
    """For a worker's lifetime, fold the counts every second or so."""

    async def fold_forever() -> None:
        while True:
            await asyncio.sleep(FOLD_INTERVAL_SECONDS * random.uniform(0.5, 1.5))  # noqa: S311
            try:
                await fold(database=database)
            except DatabaseUnavailableError as exc:
                logger.warning("note_counts_fold_failed", error=str(exc))
            except Exception:
                logger.exception("note_counts_fold_failed")

    folder = asyncio.create_task(fold_forever())
    try:
        yield
    finally:
        folder.cancel()
