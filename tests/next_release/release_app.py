"""The notes service of the next release: as today, and a priority per note, read and written
at /api/v1/notes/{id}/priority (the column revision 0004 adds)."""

from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from pydantic import BaseModel, Field

from service.database.connections import Database, get_database
from service.main import create_app as create_notes_app

router = APIRouter(prefix="/api/v1/notes", tags=["notes"])
DatabaseDep = Annotated[Database, Depends(get_database)]


class Priority(BaseModel):
    priority: int = Field(ge=0, le=9)


@router.get("/{note_id}/priority")
async def read_priority(note_id: int, database: DatabaseDep) -> Priority:
    async with database.connection() as connection:
        value = await connection.fetchval("SELECT priority FROM notes WHERE id = $1", note_id)
    if value is None:
        raise HTTPException(404, "Note not found")
    return Priority(priority=value)


@router.put("/{note_id}/priority")
async def write_priority(note_id: int, body: Priority, database: DatabaseDep) -> Priority:
    async with database.transaction() as connection:
        value = await connection.fetchval(
            "UPDATE notes SET priority = $2 WHERE id = $1 RETURNING priority",
            note_id,
            body.priority,
        )
    if value is None:
        raise HTTPException(404, "Note not found")
    return Priority(priority=value)


def create_app() -> FastAPI:
    app = create_notes_app()
    app.include_router(router)
    return app
