"""A FastAPI route class that serves a simple signature with a plan precompiled when the
route is built, and leaves everything else to FastAPI's own handler.

On every request FastAPI's handler solves the dependency graph, validates each parameter with
an adapter of its own, collects errors one by one, and wraps the call in two exit stacks and an
exception guard: a third of a read's CPU (py-spy under wrk, docs/performance.md). Most
endpoints need none of that generality. For a route whose signature is simple (path, query
and header scalars, one JSON body model, the `Request`, dependencies that take nothing but the
`Request`, and a `Response` returned as it is), the plan reads the same inputs, validates them
all at once with one pydantic model, runs the same dependencies in the same order, calls the
endpoint and sends its response. Exceptions go to the app's exception handlers, as from
FastAPI's handler.

FastAPI builds a route's handler once for the route and once per inclusion of its router,
with the dependencies that inclusion adds; a plan is made each time, for that view of the
route, so a dependency declared on an `APIRouter`, at `include_router` or on the app is part of
what is checked. What a plan cannot prove FastAPI would answer alike goes to FastAPI, unread or
with the body replayed:

- a route whose signature is not simple, or with a body size limit of its own;
- every request while `app.dependency_overrides` holds an override, or FastAPI's telemetry is
  on, and a method the route does not serve (405);
- a body that is not `Content-Type: application/json`, or not JSON, and any input the model
  refuses: FastAPI then answers 422 in its own words, or whatever its order of work decides
  (dependencies first).
"""

import inspect
import types
import typing
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
from fastapi import params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, Json, ValidationError, create_model
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from service.http.route_views import building_view, serving_view

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

# Set by FastAPI when its OpenTelemetry hooks are on: its own handler reports to them.
_TELEMETRY_SCOPE = "fastapi.telemetry"
_SOURCES = {params.Path: "path_params", params.Query: "query_params", params.Header: "headers"}
# A Dependant's special parameters that this handler does not provide.
_UNSUPPORTED_SPECIALS = (
    "websocket_param_name",
    "http_connection_param_name",
    "response_param_name",
    "background_tasks_param_name",
    "security_scopes_param_name",
)
_NOT_SCALAR = (BaseModel, list, set, frozenset, tuple, dict)


class PrecompiledRoute(APIRoute):
    """An `APIRoute` served by a precompiled plan where its signature allows it."""

    # Each view of the route FastAPI built a handler for (the route itself, and its view in
    # each inclusion), by id: the view, and its plan or None.
    _plans: dict[int, tuple[Any, "_Plan | None"]]

    def get_route_handler(self) -> Handler:
        """FastAPI's handler, and beside it the plan for the view it is built for."""
        view = building_view(self)
        plan = None
        if getattr(view, "max_body_size", None) is None:
            plan = _Plan.of(view.dependant, embedded_body=view._embed_body_fields)
        self.__dict__.setdefault("_plans", {})[id(view)] = (view, plan)
        return super().get_route_handler()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the request with the plan of the view that matched it, or hand it to FastAPI:
        when there is no plan, an override is present, the method is not the route's (405),
        FastAPI's telemetry is on, or the plan cannot take the request's input."""
        view = serving_view(scope, self)
        view_plan = self._plans.get(id(view))
        plan = view_plan[1] if view_plan is not None and view_plan[0] is view else None
        overrides = getattr(view.dependency_overrides_provider, "dependency_overrides", None)
        if (
            plan is None
            or overrides
            or scope["method"] not in view.methods
            or _TELEMETRY_SCOPE in scope
        ):
            await super().handle(scope, receive, send)
            return
        request = Request(scope, receive, send)
        values = await plan.values(request)
        if values is None:
            if plan.body is not None:
                receive = _replay(await request.body(), receive)
            await super().handle(scope, receive, send)
            return
        response = await plan.respond(request, values)
        await response(scope, receive, send)


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


@dataclass(frozen=True, slots=True)
class _Dependency:
    """A dependency that takes nothing but the request: its name, callable, and the name of
    its request parameter."""

    name: str | None
    call: Callable[..., Coroutine[Any, Any, Any]]
    request_param_name: str | None
    use_cache: bool


@dataclass(frozen=True, slots=True)
class _Plan:
    """What the precompiled handler reads, validates and calls, decided once per route."""

    call: Callable[..., Coroutine[Any, Any, Any]]
    validator: type[BaseModel]
    # Where each parameter is read: (the Request's attribute, ((name, request key), ...)).
    sources: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    body: str | None
    request_param_name: str | None
    dependencies: tuple[_Dependency, ...]

    @classmethod
    def of(cls, dependant: Dependant, *, embedded_body: bool) -> "_Plan | None":
        """The plan for a route with this dependant, or None when its signature is not simple."""
        call = dependant.call
        if not _returns_response(call) or not _plain(dependant) or dependant.cookie_params:
            return None
        parameters = _parameters(dependant)
        body = _body(dependant, embedded=embedded_body)
        dependencies = [_request_only(sub) for sub in dependant.dependencies]
        if parameters is None or body is None or None in dependencies:
            return None
        validator = _validator(
            call, [*(f for fields in parameters.values() for f in fields), *body]
        )
        if validator is None:
            return None
        sources = tuple(
            (_SOURCES[kind], tuple((field.name, field.alias) for field in fields))
            for kind, fields in parameters.items()
            if fields
        )
        return cls(
            call=call,  # type: ignore[arg-type]
            validator=validator,
            sources=sources,
            body=body[0].name if body else None,
            request_param_name=dependant.request_param_name,
            dependencies=tuple(d for d in dependencies if d is not None),
        )

    async def values(self, request: Request) -> dict[str, Any] | None:
        """The endpoint's arguments but its dependencies, or None where FastAPI must decide."""
        raw: dict[str, Any] = {}
        for source_name, keys in self.sources:
            source = getattr(request, source_name)
            for name, key in keys:
                if (value := source.get(key)) is not None:
                    raw[name] = value
        if self.body is not None:
            if request.headers.get("content-type") != "application/json":
                return None
            try:
                raw[self.body] = orjson.loads(await request.body())
            except orjson.JSONDecodeError:
                return None
        try:
            values = self.validator.model_validate(raw).__dict__.copy()
        except ValidationError:
            return None
        if self.request_param_name is not None:
            values[self.request_param_name] = request
        return values

    async def respond(self, request: Request, values: dict[str, Any]) -> Response:
        """Run the dependencies, then the endpoint with `values`, as FastAPI would."""
        if self.dependencies:
            await _solve(self.dependencies, request, values)
        response = await self.call(**values)
        if not isinstance(response, Response):
            name = getattr(self.call, "__qualname__", self.call)
            msg = f"{name} is annotated to return a Response, not {response!r}"
            raise TypeError(msg)
        return response


def _parameters(dependant: Dependant) -> dict[type[params.Param], list[Any]] | None:
    """The path, query and header parameters by kind, if each is read from one string."""
    found: dict[type[params.Param], list[Any]] = {kind: [] for kind in _SOURCES}
    for field in [*dependant.path_params, *dependant.query_params, *dependant.header_params]:
        kind = type(field.field_info)
        if kind not in found or not _scalar(field.field_info.annotation):
            return None
        found[kind].append(field)
    return found


def _body(dependant: Dependant, *, embedded: bool) -> list[Any] | None:
    """The body parameter (none, or one JSON model taken whole), or None if it is otherwise."""
    if not dependant.body_params:
        return []
    if len(dependant.body_params) > 1 or embedded:
        return None
    (field,) = dependant.body_params
    annotation = field.field_info.annotation
    if type(field.field_info) is not params.Body or not _is_model(annotation):
        return None
    return [field]


async def _solve(
    dependencies: Sequence[_Dependency], request: Request, values: dict[str, Any]
) -> None:
    """Run the dependencies in FastAPI's order; a cached one runs once per request."""
    cache: dict[Callable[..., Any], Any] = {}
    for dependency in dependencies:
        if dependency.use_cache and dependency.call in cache:
            value = cache[dependency.call]
        else:
            name = dependency.request_param_name
            value = await dependency.call(**({} if name is None else {name: request}))
            cache.setdefault(dependency.call, value)
        if dependency.name is not None:
            values[dependency.name] = value


def _returns_response(call: Any) -> bool:
    if not inspect.iscoroutinefunction(call):
        return False
    try:
        returned = typing.get_type_hints(call).get("return")
    except (NameError, TypeError):
        return False
    return isinstance(returned, type) and issubclass(returned, Response)


def _plain(dependant: Dependant) -> bool:
    """No special parameter this handler does not provide, and no concurrency limit."""
    return not any(getattr(dependant, name, None) for name in _UNSUPPORTED_SPECIALS) and (
        getattr(dependant, "concurrency", None) is None
    )


def _request_only(dependant: Dependant) -> _Dependency | None:
    """The dependency, if it is an async function of at most the request, with nothing below."""
    call = dependant.call
    if (
        not inspect.iscoroutinefunction(call)
        or not _plain(dependant)
        or dependant.dependencies
        or dependant.path_params
        or dependant.query_params
        or dependant.header_params
        or dependant.cookie_params
        or dependant.body_params
        or getattr(dependant, "own_oauth_scopes", None)
    ):
        return None
    return _Dependency(
        name=dependant.name,
        call=call,
        request_param_name=dependant.request_param_name,
        use_cache=dependant.use_cache,
    )


def _scalar(annotation: Any) -> bool:
    """A type read from one string (FastAPI reads collections and models otherwise)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _scalar(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return all(_scalar(argument) for argument in typing.get_args(annotation))
    if origin is not None:
        return origin is typing.Literal
    return not (isinstance(annotation, type) and issubclass(annotation, _NOT_SCALAR))


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _validator(call: Any, fields: Sequence[Any]) -> type[BaseModel] | None:
    """One model with a field per parameter, each with the parameter's type, constraints and
    default: what FastAPI validates each parameter against, all in one pass."""
    definitions: dict[str, Any] = {}
    for field in fields:
        name, info = field.name, field.field_info
        if (
            name.startswith("_")
            or hasattr(BaseModel, name)
            or info.validation_alias is not None
            or any(type(item) is Json for item in info.metadata)
        ):
            return None
        annotation = (
            Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
        )
        definitions[name] = (annotation, ... if info.is_required() else field.default)
    return create_model(f"{getattr(call, '__qualname__', 'endpoint')}.parameters", **definitions)
