"""The hottest requests, served without FastAPI's per-request machinery.

FastAPI solves dependencies, validates each parameter and wraps each route on every request:
a third of a read's CPU and a quarter of a write's, measured with py-spy under wrk
(docs/performance.md). A direct route is a plain Starlette route, tried before the documented
one it stands in for, that takes only the requests whose input needs nothing more than the
model's own validation: ids of up to 18 digits (always a valid bigint), bodies of
`Content-Type: application/json` that the model accepts, a well-formed Idempotency-Key.
Anything else it hands, unread, to the documented route, which answers it as the OpenAPI says.
Both run the same handler (`service.notes.router`), so the answers are the same, and the app's
error handlers apply to both.
"""

import re
from collections.abc import Awaitable, Callable, Sequence

from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.convertors import IntegerConvertor, register_url_convertor
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Message, Receive, Scope, Send

from service.idempotency.dependencies import KEY_PATTERN
from service.notes import router
from service.notes.schemas import NoteCreate, NoteUpdate

_KEY = re.compile(KEY_PATTERN)

Write = Callable[[Request, BaseModel, str | None], Awaitable[Response]]


class DirectRoute(Route):
    """A route that stands in for a documented one: metrics label it as that one."""


class _ShortIdConvertor(IntegerConvertor):
    """Up to 18 digits: always a valid bigint, so there is nothing left to validate."""

    regex = "[0-9]{1,18}"


register_url_convertor("short_id", _ShortIdConvertor())


async def _read(request: Request) -> Response:
    return await router.read(request.state.database, request.path_params["note_id"])


class _DirectWrite:
    """An ASGI endpoint that validates the body with `model` and runs `write`, or hands the
    request, with the body it read, to `documented`."""

    def __init__(self, model: type[BaseModel], write: Write, documented: APIRoute) -> None:
        self.model = model
        self.write = write
        self.documented = documented

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        body = await request.body()
        payload = self._payload(request, body)
        if payload is not None:
            key = request.headers.get("idempotency-key")
            response = await self.write(request, payload, key)
            await response(scope, receive, send)
            return
        match, child = self.documented.matches(scope)
        assert match is Match.FULL  # noqa: S101 (this route's paths are a subset of its)
        await self.documented.handle({**scope, **child}, _replay(body, receive), send)

    def _payload(self, request: Request, body: bytes) -> BaseModel | None:
        headers = request.headers
        if headers.get("content-type") != "application/json":
            return None
        key = headers.get("idempotency-key")
        if key is not None and not _KEY.match(key):
            return None
        try:
            return self.model.model_validate_json(body)
        except ValidationError:
            return None


def _replay(body: bytes, receive: Receive) -> Receive:
    """The body read once already, then whatever else the client sends (a disconnect)."""
    pending = True

    async def replayed() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replayed


async def _create(request: Request, note_in: BaseModel, key: str | None) -> Response:
    assert isinstance(note_in, NoteCreate)  # noqa: S101 (the model of this route)
    return await router.create(request, key, note_in)


async def _update(request: Request, changes: BaseModel, key: str | None) -> Response:
    assert isinstance(changes, NoteUpdate)  # noqa: S101 (the model of this route)
    note_id = request.path_params["note_id"]
    if_match = request.headers.get("if-match")
    return await router.update(request, key, note_id, changes.changes(), if_match)


def direct_routes(documented: Sequence[BaseRoute]) -> list[DirectRoute]:
    """The direct routes, each with the documented route it hands the rest to."""

    def route(path: str, method: str) -> APIRoute:
        return next(
            r
            for r in documented
            if isinstance(r, APIRoute) and r.path == path and method in (r.methods or ())
        )

    notes, note = "/api/v1/notes", "/api/v1/notes/{note_id}"
    return [
        DirectRoute(f"{notes}/{{note_id:short_id}}", _read, methods=["GET"]),
        DirectRoute(
            notes, _DirectWrite(NoteCreate, _create, route(notes, "POST")), methods=["POST"]
        ),
        DirectRoute(
            f"{notes}/{{note_id:short_id}}",
            _DirectWrite(NoteUpdate, _update, route(note, "PATCH")),
            methods=["PATCH"],
        ),
    ]
