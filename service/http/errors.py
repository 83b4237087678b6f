"""Maps domain errors, and the database's unavailability, to HTTP responses, in one place.

No response body ever carries a traceback or SQL: those go to the log only. Every body can be
encoded: a validation error that echoes the client's input replaces what strict JSON in UTF-8
cannot carry. Whether the database is unavailable is decided where statements run
(`service.database.connections`); this module only answers it. An exception no handler here
answers is a bug, answered 500 by `service.http.middleware`.
"""

import math
import re
from typing import Any

import structlog
from fastapi import FastAPI, Request, status
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from service.database.connections import DatabaseUnavailableError
from service.exceptions import NotFoundError, PreconditionFailedError, UnprocessableRequestError
from service.http.middleware import RETRY_AFTER_SECONDS

logger = structlog.get_logger(__name__)

# A lone UTF-16 surrogate (JSON's "\ud800") is a valid Python str but has no UTF-8 encoding.
_SURROGATE = re.compile("[\ud800-\udfff]")


def encodable(value: Any) -> Any:
    """`value` as strict JSON can carry it: every lone surrogate in its strings replaced by
    U+FFFD, and the floats JSON has no number for (a body's `1e999` or `NaN`) as strings."""
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {encodable(key): encodable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [encodable(item) for item in value]
    return value


def validation_error_body(errors: Any) -> dict[str, Any]:
    """FastAPI's 422 body for these validation errors, safe to encode whatever the input."""
    return {"detail": encodable(jsonable_encoder(errors))}


async def _request_invalid(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 (registered for it alone)
    return JSONResponse(
        validation_error_body(exc.errors()), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
    )


async def _unprocessable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, UnprocessableRequestError)  # noqa: S101 (registered for it alone)
    error = {"loc": list(exc.loc), "msg": str(exc), "type": exc.type}
    return JSONResponse(
        validation_error_body([error]), status_code=status.HTTP_422_UNPROCESSABLE_CONTENT
    )


async def _not_found(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_404_NOT_FOUND)


async def _precondition_failed(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_412_PRECONDITION_FAILED)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    cause = exc.__cause__ or exc
    logger.warning("database_unavailable", error=type(cause).__name__, detail=str(exc)[:500])
    return JSONResponse(
        {"detail": "Database unavailable"},
        status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def register_error_handlers(app: FastAPI) -> None:
    """Install every error-to-response mapping on `app`."""
    app.add_exception_handler(RequestValidationError, _request_invalid)
    app.add_exception_handler(UnprocessableRequestError, _unprocessable)
    app.add_exception_handler(NotFoundError, _not_found)
    app.add_exception_handler(PreconditionFailedError, _precondition_failed)
    app.add_exception_handler(DatabaseUnavailableError, _database_unavailable)
