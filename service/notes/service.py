"""Queries of the notes domain; every function takes keyword-only arguments.

Reads open their own autocommit connection; writes run on the caller's session, inside the
transaction the caller opened (`service.idempotency.service.run`), so that an Idempotency-Key
and its stored outcome commit together with the write.
"""

import asyncio
import time
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.database.connections import Database
from service.notes.etag import IfMatch
from service.notes.exceptions import NoteNotFoundError, NoteVersionMismatchError
from service.notes.models import Note
from service.notes.schemas import NoteCreate, NoteStats
from service.observability.timing import record_timing

notes = cast(Table, Note.__table__)

# Plain Core statements on the table: SQLAlchemy caches their compiled form and asyncpg
# keeps each one prepared per connection, so a read is one round trip with no ORM overhead.
NoteRow = Row[tuple[int, str, bool, int, datetime, datetime]]
_NOTE_COLUMNS = (
    notes.c.id,
    notes.c.text,
    notes.c.completed,
    notes.c.version,
    notes.c.created_at,
    notes.c.updated_at,
)


# Built once: the hottest statement skips expression building and cache-key generation.
_SELECT_NOTE = select(*_NOTE_COLUMNS).where(notes.c.id == bindparam("note_id"))


async def get_note(*, database: Database, note_id: int) -> NoteRow:
    """The note with this id, or NoteNotFoundError."""
    async with database.read_connection() as connection:
        row = (await connection.execute(_SELECT_NOTE, {"note_id": note_id})).first()
    if row is None:
        raise NoteNotFoundError(note_id)
    return cast(NoteRow, row)


async def list_notes(
    *, database: Database, limit: int, completed: bool | None, after_id: int | None
) -> tuple[list[NoteRow], bool]:
    """Up to `limit` notes with ids above `after_id`, ascending, and whether more follow."""
    statement = select(*_NOTE_COLUMNS).order_by(notes.c.id).limit(limit + 1)
    if after_id is not None:
        statement = statement.where(notes.c.id > after_id)
    if completed is not None:
        statement = statement.where(notes.c.completed == completed)
    async with database.read_connection() as connection:
        rows = cast(list[NoteRow], (await connection.execute(statement)).all())
    return rows[:limit], len(rows) > limit


async def create_note(*, session: AsyncSession, note_in: NoteCreate) -> NoteRow:
    """Insert a note; the database assigns id, version and timestamps."""
    statement = insert(notes).values(note_in.model_dump()).returning(*_NOTE_COLUMNS)
    return cast(NoteRow, (await session.execute(statement)).one())


async def update_note(
    *, session: AsyncSession, note_id: int, changes: dict[str, Any], if_match: IfMatch | None
) -> NoteRow:
    """Apply `changes` if the note exists and matches `if_match`; the version check and the
    write are one UPDATE, so of two writers holding the same ETag exactly one succeeds."""
    if not changes:
        row = (await session.execute(_SELECT_NOTE, {"note_id": note_id})).first()
        if row is None:
            raise NoteNotFoundError(note_id)
        if if_match is not None and not if_match.matches(row.version):
            raise NoteVersionMismatchError(note_id)
        return cast(NoteRow, row)

    statement = (
        update(notes)
        .where(notes.c.id == note_id, *_version_condition(if_match))
        .values(changes)
        .returning(*_NOTE_COLUMNS)
    )
    row = (await session.execute(statement)).first()
    if row is None:
        raise await _missing_or_changed(session=session, note_id=note_id)
    return cast(NoteRow, row)


async def delete_note(*, session: AsyncSession, note_id: int, if_match: IfMatch | None) -> None:
    """Delete the note if it exists and matches `if_match`."""
    statement = (
        delete(notes)
        .where(notes.c.id == note_id, *_version_condition(if_match))
        .returning(notes.c.id)
    )
    if (await session.execute(statement)).first() is None:
        raise await _missing_or_changed(session=session, note_id=note_id)


async def count_notes(*, database: Database) -> NoteStats:
    """Count completed and open notes concurrently, each on its own connection.

    total is their sum, so the three numbers always agree even while notes are written.
    """
    async with database.read_connections(2) as (first, second):
        completed, open_ = await asyncio.gather(
            _count(connection=first, completed=True), _count(connection=second, completed=False)
        )
    return NoteStats(total=completed + open_, completed=completed, open=open_)


async def _count(*, connection: AsyncConnection, completed: bool) -> int:
    started = time.perf_counter()
    statement = select(func.count()).select_from(notes).where(notes.c.completed == completed)
    count = await connection.scalar(statement)
    record_timing("db-completed" if completed else "db-open", time.perf_counter() - started)
    return int(count or 0)


def _version_condition(if_match: IfMatch | None) -> list[Any]:
    if if_match is None or if_match.any_version:
        return []
    return [notes.c.version.in_(if_match.versions)]


async def _missing_or_changed(
    *, session: AsyncSession, note_id: int
) -> NoteNotFoundError | NoteVersionMismatchError:
    exists = await session.scalar(select(notes.c.id).where(notes.c.id == note_id))
    return NoteNotFoundError(note_id) if exists is None else NoteVersionMismatchError(note_id)
