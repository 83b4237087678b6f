"""What the OpenAPI document says of the answers every route may give besides its success.

FastAPI documents the success and the 422 of validation by itself; everything else a route
really answers is listed here once, so clients and the conformance tests see every status.
"""

from typing import Any

from pydantic import BaseModel


class ErrorDetail(BaseModel):
    """The body of every error answer but 422: a sentence for a person."""

    detail: str


_RETRY_AFTER = {
    "description": "Seconds to wait before retrying.",
    "schema": {"type": "integer", "minimum": 0},
}

_ERRORS: dict[int, dict[str, Any]] = {
    400: {"description": "The body could not be read as JSON (or nginx refused the request)."},
    404: {"description": "No such note."},
    412: {"description": "If-Match names no current version of the note; nothing changed."},
    413: {"description": "The body is larger than 1 MiB (answered by nginx)."},
    503: {
        "description": (
            "The database cannot serve the request now, or the request outlasted "
            "REQUEST_TIMEOUT; nothing was written that a retry could duplicate."
        ),
        "headers": {"Retry-After": _RETRY_AFTER},
    },
}

_ETAG = {"ETag": {"description": "The note's current version.", "schema": {"type": "string"}}}
_LOCATION = {"Location": {"description": "The new note's URL.", "schema": {"type": "string"}}}


def error_responses(
    *statuses: int, created: bool = False, etag: bool = False
) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route: these error statuses, and the headers of its success."""
    responses: dict[int | str, dict[str, Any]] = {
        status: {**_ERRORS[status], "model": ErrorDetail} for status in statuses
    }
    if created:
        responses[201] = {"headers": {**_ETAG, **_LOCATION}}
    elif etag:
        responses[200] = {"headers": _ETAG}
    return responses
