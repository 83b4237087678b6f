"""HTTP routes of the notes API: parse, delegate to the service, shape the response."""

import base64
import binascii
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import asyncpg
import orjson
from fastapi import APIRouter, Header, Path, Query, Request, Response, status
from pydantic import BeforeValidator

from service.database.connections import Database, DatabaseDep
from service.database.models import BIGINT_MAX, BIGINT_MIN
from service.http.openapi import error_responses
from service.http.precompiled import PrecompiledRoute
from service.idempotency import service as idempotency
from service.idempotency.dependencies import IdempotencyKeyHeader, idempotent_request
from service.notes import counts, service
from service.notes.etag import etag_for, parse_if_match
from service.notes.schemas import Note, NoteCreate, NotePage, NoteReplace, NoteStats, NoteUpdate
from service.notes.service import NoteRow

# Every route validates its simple signature with one precompiled validator and leaves the rest
# to FastAPI (service.http.precompiled): a dependency added here or at include_router applies.
# The routes are declared hottest first: FastAPI tries an included router's routes in order,
# twice per request (to match, then to handle), and a route tried in vain costs a read about
# 4% of its CPU (docs/performance.md). /stats must stay before /{note_id}, which would take it.
router = APIRouter(prefix="/api/v1/notes", tags=["notes"], route_class=PrecompiledRoute)

_CURSOR = re.compile(rb"after:([0-9]{1,19})")

NoteId = Annotated[int, Path(ge=BIGINT_MIN, le=BIGINT_MAX, description="The note's id.")]


def encode_cursor(after_id: int) -> str:
    """The opaque cursor that continues a walk after note `after_id`."""
    return base64.urlsafe_b64encode(b"after:%d" % after_id).decode().rstrip("=")


def decode_cursor(cursor: object) -> int | None:
    """The id a cursor continues after; ValueError for anything `encode_cursor` cannot make."""
    if cursor is None:
        return None
    text = str(cursor)
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    match = _CURSOR.fullmatch(raw)
    if match is None or int(match[1]) > BIGINT_MAX:
        msg = "invalid cursor: pass back a next_cursor from an earlier page"
        raise ValueError(msg)
    return int(match[1])


Cursor = Annotated[int | None, BeforeValidator(decode_cursor)]


# Parsed by the route for the note it targets (service.notes.etag.parse_if_match).
IfMatchHeader = Annotated[str | None, Header()]


def _note_body(row: NoteRow) -> dict[str, Any]:
    return {
        "id": row["id"],
        "text": row["text"],
        "completed": row["completed"],
        "created_at": row["created_at"],
        "updated_at": row["updated_at"],
    }


def _json(
    content: Any, *, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    # Rows are rendered straight to JSON: the response model documents the shape, and
    # validating data that came out of our own table would only cost time.
    body = orjson.dumps(content, option=orjson.OPT_UTC_Z)
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


def _note_response(row: NoteRow, *, status_code: int = 200) -> Response:
    headers = {"ETag": etag_for(row["id"], row["version"])}
    if status_code == status.HTTP_201_CREATED:
        headers["Location"] = f"{router.prefix}/{row['id']}"
    return _json(_note_body(row), status_code=status_code, headers=headers)


@router.get("/stats", response_model=NoteStats, responses=error_responses(503))
async def note_stats(database: DatabaseDep) -> Response:
    """Count notes by state, from one snapshot."""
    return _json((await counts.note_stats(database=database)).model_dump())


@router.get("/{note_id}", response_model=Note, responses=error_responses(404, 503, etag=True))
async def get_note(note_id: NoteId, database: DatabaseDep) -> Response:
    """Read one note."""
    return _note_response(await service.get_note(database=database, note_id=note_id))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=Note,
    responses=error_responses(400, 413, 503, created=True),
)
async def create_note(
    note_in: NoteCreate,
    request: Request,
    database: DatabaseDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Create a note."""

    async def insert(connection: asyncpg.Connection) -> Response:
        row = await service.create_note(connection=connection, note_in=note_in)
        return _note_response(row, status_code=status.HTTP_201_CREATED)

    return await _write(database, request, idempotency_key, insert)


@router.patch(
    "/{note_id}",
    response_model=Note,
    responses=error_responses(400, 404, 412, 413, 503, etag=True),
)
async def update_note(
    note_id: NoteId,
    changes: NoteUpdate,
    *,
    request: Request,
    database: DatabaseDep,
    if_match: IfMatchHeader = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Change some fields of a note."""
    return await _update(
        database=database,
        request=request,
        key=idempotency_key,
        note_id=note_id,
        changes=changes.changes(),
        if_match=if_match,
    )


@router.get("", response_model=NotePage, responses=error_responses(503))
async def list_notes(
    database: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    completed: bool | None = None,
    cursor: Annotated[Cursor, Query()] = None,
) -> Response:
    """List notes in ascending id order, a page at a time."""
    rows, more = await service.list_notes(
        database=database, limit=limit, completed=completed, after_id=cursor
    )
    next_cursor = encode_cursor(rows[-1]["id"]) if more else None
    return _json({"items": [_note_body(row) for row in rows], "next_cursor": next_cursor})


@router.put(
    "/{note_id}",
    response_model=Note,
    responses=error_responses(400, 404, 412, 413, 503, etag=True),
)
async def replace_note(
    note_id: NoteId,
    note_in: NoteReplace,
    *,
    request: Request,
    database: DatabaseDep,
    if_match: IfMatchHeader = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Replace every field of a note."""
    return await _update(
        database=database,
        request=request,
        key=idempotency_key,
        note_id=note_id,
        changes=note_in.model_dump(),
        if_match=if_match,
    )


async def _update(
    *,
    database: Database,
    request: Request,
    key: str | None,
    note_id: int,
    changes: dict[str, Any],
    if_match: str | None,
) -> Response:
    """PATCH and PUT: apply `changes` if If-Match allows."""
    precondition = None if if_match is None else parse_if_match(if_match, note_id)

    async def apply(connection: asyncpg.Connection) -> Response:
        row = await service.update_note(
            connection=connection, note_id=note_id, changes=changes, if_match=precondition
        )
        return _note_response(row)

    return await _write(database, request, key, apply)


@router.delete(
    "/{note_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=error_responses(404, 412, 503),
)
async def delete_note(
    note_id: NoteId,
    request: Request,
    database: DatabaseDep,
    if_match: IfMatchHeader = None,
    idempotency_key: IdempotencyKeyHeader = None,
) -> Response:
    """Delete a note."""
    precondition = None if if_match is None else parse_if_match(if_match, note_id)

    async def delete(connection: asyncpg.Connection) -> Response:
        await service.delete_note(connection=connection, note_id=note_id, if_match=precondition)
        return Response(status_code=status.HTTP_204_NO_CONTENT)

    return await _write(database, request, idempotency_key, delete)


async def _write(
    database: Database,
    request: Request,
    key: str | None,
    write: Callable[[asyncpg.Connection], Awaitable[Response]],
) -> Response:
    """Run a route's write: in one transaction with its Idempotency-Key, if it sent one."""
    return await idempotency.run(
        database=database,
        request=await idempotent_request(request, key),
        write=write,
    )
