"""The floor for the read benchmark: Starlette and a raw asyncpg pool, no framework extras."""

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

QUERY = "SELECT id, text, completed, version, created_at, updated_at FROM notes WHERE id = $1"


async def get_note(request: Request) -> Response:
    """The same row, query and JSON as the service's GET /api/v1/notes/{id}."""
    async with request.state.pool.acquire() as connection:
        row = await connection.fetchrow(QUERY, int(request.path_params["note_id"]))
    if row is None:
        return Response(b'{"detail":"not found"}', status_code=404, media_type="application/json")
    body = {key: row[key] for key in ("id", "text", "completed", "created_at", "updated_at")}
    return Response(
        orjson.dumps(body, option=orjson.OPT_UTC_Z),
        media_type="application/json",
        headers={"ETag": f'"{row["id"]}-{row["version"]}"'},
    )


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, asyncpg.Pool]]:
    """One pool per process, like the service."""
    dsn = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://")
    async with asyncpg.create_pool(dsn, min_size=5, max_size=10) as pool:
        yield {"pool": pool}


app = Starlette(routes=[Route("/api/v1/notes/{note_id:int}", get_note)], lifespan=lifespan)
