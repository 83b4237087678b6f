"""Liveness and readiness probes."""

import ast
import asyncio
from pathlib import Path
from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, Request, status
from fastapi.responses import JSONResponse

from service.database.connections import DatabaseDep, DatabaseUnavailableError

VERSIONS_DIR = Path(__file__).resolve().parent.parent / "migrations" / "versions"

router = APIRouter(tags=["health"])


def alembic_heads(versions_dir: Path = VERSIONS_DIR) -> frozenset[str]:
    """The head revisions of the migrations shipped with this code.

    Read from the revision files' `revision` and `down_revision` assignments rather than
    through Alembic, whose import costs each worker 0.6 s of start time; a test checks that
    the answer equals Alembic's own.
    """
    revisions: set[str] = set()
    parents: set[str] = set()
    for path in versions_dir.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            target: ast.expr
            if isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            else:
                continue
            if not isinstance(target, ast.Name):
                continue
            if target.id == "revision":
                revisions.add(ast.literal_eval(value))
            elif target.id == "down_revision":
                parent = ast.literal_eval(value)
                parents.update([parent] if isinstance(parent, str) else parent or ())
    return frozenset(revisions - parents)


async def get_schema_heads(request: Request) -> frozenset[str]:
    """The revisions this process expects the database to be at (lifespan state)."""
    heads: frozenset[str] = request.state.schema_heads
    return heads


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process runs and its event loop answers. Touches no database."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Database unreachable or not migrated"}})
async def readyz(
    database: DatabaseDep,
    heads: Annotated[frozenset[str], Depends(get_schema_heads)],
    request: Request,
) -> JSONResponse:
    """Readiness: the database answers and its schema is at this code's Alembic head."""
    try:
        # Bounded like a connection attempt, so a probe never hangs on a saturated pool.
        async with asyncio.timeout(request.state.settings.db_connect_timeout):
            async with database.connection() as connection:
                current = await connection.fetchval("SELECT version_num FROM alembic_version")
    except asyncpg.UndefinedTableError:
        return _unavailable("schema not migrated: no alembic_version table")
    except (DatabaseUnavailableError, TimeoutError):
        # TimeoutError: this check's own bound, above.
        return _unavailable("database unreachable")
    except asyncpg.PostgresError as exc:
        # Reachable, but the check itself is refused (a missing privilege, say): not ready.
        return _unavailable(f"the readiness check failed: {type(exc).__name__} ({exc.sqlstate})")
    if current not in heads:
        return _unavailable(f"schema at {current}, expected {', '.join(sorted(heads))}")
    return JSONResponse({"status": "ready"})


def _unavailable(reason: str) -> JSONResponse:
    return JSONResponse(
        {"status": "unavailable", "reason": reason},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
    )
