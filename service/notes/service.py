"""Queries of the notes domain; every function takes keyword-only arguments.

Each statement is SQLAlchemy Core on the notes table, compiled once to asyncpg's SQL
(`service.database.statements`). Reads take a pooled connection of their own; writes run on
the connection the caller holds (`service.idempotency.service.run`): in autocommit, or in the
transaction that stores an Idempotency-Key with the write.
"""

from collections.abc import Mapping
from functools import cache
from typing import Any, cast

import asyncpg
from sqlalchemy import BigInteger, any_, bindparam, delete, insert, select, update
from sqlalchemy.dialects.postgresql import ARRAY

from service.database.connections import Database
from service.database.statements import Query, compiled
from service.notes.etag import IfMatch
from service.notes.exceptions import NoteNotFoundError, NoteVersionMismatchError
from service.notes.models import notes
from service.notes.schemas import NoteCreate

# A row of the notes table as asyncpg returns it: id, text, completed, version, created_at,
# updated_at, by name.
NoteRow = Mapping[str, Any]
_NOTE_COLUMNS = (
    notes.c.id,
    notes.c.text,
    notes.c.completed,
    notes.c.version,
    notes.c.created_at,
    notes.c.updated_at,
)
_VERSIONS = bindparam("versions", type_=ARRAY(BigInteger))

_SELECT_NOTE = compiled(select(*_NOTE_COLUMNS).where(notes.c.id == bindparam("note_id")))
_NOTE_EXISTS = compiled(select(notes.c.id).where(notes.c.id == bindparam("note_id")))
_INSERT_NOTE = compiled(
    insert(notes)
    .values(text=bindparam("new_text"), completed=bindparam("new_completed"))
    .returning(*_NOTE_COLUMNS)
)


@cache
def _list_query(*, after: bool, filtered: bool) -> Query:
    statement = select(*_NOTE_COLUMNS).order_by(notes.c.id).limit(bindparam("limit"))
    if after:
        statement = statement.where(notes.c.id > bindparam("after_id"))
    if filtered:
        statement = statement.where(notes.c.completed == bindparam("state"))
    return compiled(statement)


@cache
def _update_query(fields: frozenset[str], *, versioned: bool) -> Query:
    conditions = [notes.c.id == bindparam("note_id")]
    if versioned:
        conditions.append(notes.c.version == any_(_VERSIONS))
    values: dict[str, Any] = {name: bindparam(f"new_{name}") for name in sorted(fields)}
    return compiled(update(notes).where(*conditions).values(values).returning(*_NOTE_COLUMNS))


@cache
def _delete_query(*, versioned: bool) -> Query:
    conditions = [notes.c.id == bindparam("note_id")]
    if versioned:
        conditions.append(notes.c.version == any_(_VERSIONS))
    return compiled(delete(notes).where(*conditions).returning(notes.c.id))


async def get_note(*, database: Database, note_id: int) -> NoteRow:
    """The note with this id, or NoteNotFoundError."""
    async with database.connection() as connection:
        row = await connection.fetchrow(_SELECT_NOTE.sql, note_id)
    if row is None:
        raise NoteNotFoundError(note_id)
    return cast(NoteRow, row)


async def list_notes(
    *, database: Database, limit: int, completed: bool | None, after_id: int | None
) -> tuple[list[NoteRow], bool]:
    """Up to `limit` notes with ids above `after_id`, ascending, and whether more follow."""
    query = _list_query(after=after_id is not None, filtered=completed is not None)
    arguments = query.arguments(limit=limit + 1, after_id=after_id, state=completed)
    async with database.connection() as connection:
        rows = await connection.fetch(query.sql, *arguments)
    return rows[:limit], len(rows) > limit


async def create_note(*, connection: asyncpg.Connection, note_in: NoteCreate) -> NoteRow:
    """Insert a note; the database assigns id, version and timestamps."""
    arguments = _INSERT_NOTE.arguments(new_text=note_in.text, new_completed=note_in.completed)
    return cast(NoteRow, await connection.fetchrow(_INSERT_NOTE.sql, *arguments))


async def update_note(
    *,
    connection: asyncpg.Connection,
    note_id: int,
    changes: dict[str, Any],
    if_match: IfMatch | None,
) -> NoteRow:
    """Apply `changes` if the note exists and matches `if_match`; the version check and the
    write are one UPDATE, so of two writers holding the same ETag exactly one succeeds."""
    if not changes:
        row = await connection.fetchrow(_SELECT_NOTE.sql, note_id)
        if row is None:
            raise NoteNotFoundError(note_id)
        if if_match is not None and not if_match.matches(row["version"]):
            raise NoteVersionMismatchError(note_id)
        return cast(NoteRow, row)

    versioned = if_match is not None and not if_match.any_version
    query = _update_query(frozenset(changes), versioned=versioned)
    values = {f"new_{name}": value for name, value in changes.items()}
    arguments = query.arguments(note_id=note_id, versions=_versions(if_match), **values)
    row = await connection.fetchrow(query.sql, *arguments)
    if row is None:
        raise await _missing_or_changed(connection=connection, note_id=note_id)
    return cast(NoteRow, row)


async def delete_note(
    *, connection: asyncpg.Connection, note_id: int, if_match: IfMatch | None
) -> None:
    """Delete the note if it exists and matches `if_match`."""
    query = _delete_query(versioned=if_match is not None and not if_match.any_version)
    arguments = query.arguments(note_id=note_id, versions=_versions(if_match))
    if await connection.fetchrow(query.sql, *arguments) is None:
        raise await _missing_or_changed(connection=connection, note_id=note_id)


def _versions(if_match: IfMatch | None) -> list[int]:
    return sorted(if_match.versions) if if_match is not None else []


async def _missing_or_changed(
    *, connection: asyncpg.Connection, note_id: int
) -> NoteNotFoundError | NoteVersionMismatchError:
    exists = await connection.fetchval(_NOTE_EXISTS.sql, note_id)
    return NoteNotFoundError(note_id) if exists is None else NoteVersionMismatchError(note_id)
