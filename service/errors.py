"""Maps domain and infrastructure errors to HTTP responses, in one place.

No response body ever carries a traceback or SQL: those go to the log only.
"""

import structlog
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from service.notes.exceptions import NoteNotFoundError, NoteVersionMismatchError

logger = structlog.get_logger(__name__)

# Seconds a client should wait before retrying when the database is the problem.
_RETRY_AFTER = "1"

# SQLSTATE classes and codes that mean "the database cannot serve this now", not "our bug":
# connection exceptions, insufficient resources, operator intervention (which includes the
# statement timeout, 57014).
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")


async def _note_not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)


async def _version_mismatch(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_412_PRECONDITION_FAILED)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    logger.warning("database_unavailable", error=type(exc).__name__, detail=str(exc)[:500])
    return JSONResponse(
        {"detail": "Database unavailable"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": _RETRY_AFTER},
    )


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    # Failures of the database itself are 503; anything else is our bug.
    sqlstate = str(getattr(getattr(exc, "orig", None), "sqlstate", None) or "")
    invalidated = isinstance(exc, DBAPIError) and exc.connection_invalidated
    if invalidated or sqlstate.startswith(_UNAVAILABLE_SQLSTATE_CLASSES):
        return await _database_unavailable(request, exc)
    return await _internal_error(request, exc)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unhandled_error", error=type(exc).__name__)
    return JSONResponse(
        {"detail": "Internal Server Error"}, status_code=status.HTTP_500_INTERNAL_SERVER_ERROR
    )


def register_error_handlers(app: FastAPI) -> None:
    """Install every error-to-response mapping on `app`."""
    app.add_exception_handler(NoteNotFoundError, _note_not_found)
    app.add_exception_handler(NoteVersionMismatchError, _version_mismatch)
    for unavailable in (PoolTimeoutError, OperationalError, InterfaceError, OSError, TimeoutError):
        app.add_exception_handler(unavailable, _database_unavailable)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(Exception, _internal_error)
