"""What the service is measured against: the same endpoints written by hand on a raw asyncpg
pool, once on bare Starlette (the floor) and once on FastAPI with plain `async def` routes
(what a user would write). Same rows, statements, JSON and ETags as the service.
"""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from fastapi import FastAPI, Header, Request
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route

COLUMNS = "id, text, completed, version, created_at, updated_at"
SELECT = f"SELECT {COLUMNS} FROM notes WHERE id = $1"  # noqa: S608 (constant column list)
INSERT = f"INSERT INTO notes (text, completed) VALUES ($1, $2) RETURNING {COLUMNS}"  # noqa: S608
UPDATE = (
    "UPDATE notes SET completed = $2 WHERE id = $1 AND version = ANY($3::bigint[]) "  # noqa: S608
    f"RETURNING {COLUMNS}"
)
NOT_FOUND = Response(b'{"detail":"Not found"}', status_code=404, media_type="application/json")


def _note(row: asyncpg.Record, status: int = 200, location: bool = False) -> Response:
    body = {key: row[key] for key in ("id", "text", "completed", "created_at", "updated_at")}
    headers = {"ETag": f'"{row["id"]}-{row["version"]}"'}
    if location:
        headers["Location"] = f"/api/v1/notes/{row['id']}"
    return Response(
        orjson.dumps(body, option=orjson.OPT_UTC_Z),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _versions(if_match: str | None, note_id: int) -> list[int]:
    prefix = f'"{note_id}-'
    tags = (tag.strip() for tag in (if_match or "").split(","))
    return [int(tag[len(prefix) : -1]) for tag in tags if tag.startswith(prefix)]


@asynccontextmanager
async def _pool(app: Any) -> AsyncIterator[dict[str, asyncpg.Pool]]:
    """One pool per process, sized like the service's (DB_POOL_SIZE, default 5)."""
    dsn = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    size = int(os.environ.get("DB_POOL_SIZE", "5"))
    async with asyncpg.create_pool(dsn, min_size=size, max_size=size) as pool:
        yield {"pool": pool}


# --- bare Starlette ---------------------------------------------------------------------------


async def _bare_get(request: Request) -> Response:
    async with request.state.pool.acquire() as connection:
        row = await connection.fetchrow(SELECT, int(request.path_params["note_id"]))
    return NOT_FOUND if row is None else _note(row)


async def _bare_create(request: Request) -> Response:
    body = orjson.loads(await request.body())
    async with request.state.pool.acquire() as connection:
        row = await connection.fetchrow(INSERT, body["text"], body.get("completed", False))
    return _note(row, status=201, location=True)


async def _bare_update(request: Request) -> Response:
    note_id = int(request.path_params["note_id"])
    body = orjson.loads(await request.body())
    versions = _versions(request.headers.get("if-match"), note_id)
    async with request.state.pool.acquire() as connection:
        row = await connection.fetchrow(UPDATE, note_id, body["completed"], versions)
    return NOT_FOUND if row is None else _note(row)


bare = Starlette(
    routes=[
        Route("/api/v1/notes", _bare_create, methods=["POST"]),
        Route("/api/v1/notes/{note_id:int}", _bare_get, methods=["GET"]),
        Route("/api/v1/notes/{note_id:int}", _bare_update, methods=["PATCH"]),
    ],
    lifespan=_pool,
)


# --- FastAPI, plain async def routes on the raw pool --------------------------------------------

fastapi_raw = FastAPI(lifespan=_pool)


@fastapi_raw.get("/api/v1/notes/{note_id}")
async def _fastapi_get(note_id: int, request: Request) -> Response:
    async with request.state.pool.acquire() as connection:
        row = await connection.fetchrow(SELECT, note_id)
    return NOT_FOUND if row is None else _note(row)


@fastapi_raw.post("/api/v1/notes", status_code=201)
async def _fastapi_create(request: Request) -> Response:
    body = orjson.loads(await request.body())
    async with request.state.pool.acquire() as connection:
        row = await connection.fetchrow(INSERT, body["text"], body.get("completed", False))
    return _note(row, status=201, location=True)


@fastapi_raw.patch("/api/v1/notes/{note_id}")
async def _fastapi_update(
    note_id: int, request: Request, if_match: str | None = Header(None)
) -> Response:
    body = orjson.loads(await request.body())
    async with request.state.pool.acquire() as connection:
        row = await connection.fetchrow(
            UPDATE, note_id, body["completed"], _versions(if_match, note_id)
        )
    return NOT_FOUND if row is None else _note(row)
