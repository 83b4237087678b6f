"""A FastAPI route class whose handler validates a simple signature with one precompiled
validator, and leaves everything else to FastAPI's own handler.

On every request FastAPI's handler solves the dependency graph, validates each parameter with
an adapter of its own and collects errors one by one: a third of a read's CPU (py-spy under
wrk, docs/performance.md). Most endpoints need none of that generality. For a route whose
signature is simple (path, query and header scalars, one JSON body model, the `Request`,
dependencies that take nothing but the `Request`, and a `Response` returned as it is), the
handler built here reads the same inputs, validates them all at once with one pydantic model
compiled when the route is built, runs the same dependencies and calls the endpoint.

What it cannot prove FastAPI would answer alike goes to FastAPI's handler, unread or with the
body it already read (a `Request` reads its body once and keeps it):

- a route whose signature is not simple, decided when FastAPI builds the handler, which it does
  for every inclusion of a router, with the dependencies the inclusion adds: a dependency
  declared on an `APIRouter`, at `include_router` or on the app is part of what is checked;
- every request while `app.dependency_overrides` holds an override;
- a body that is not `Content-Type: application/json`, or not JSON, and any input the validator
  refuses: FastAPI then answers 422 in its own words, or whatever its order of work decides
  (dependencies first).
"""

import inspect
import types
import typing
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import fastapi.routing
import orjson
from fastapi import params
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic import BaseModel, Json, ValidationError, create_model
from starlette.requests import Request
from starlette.responses import Response

Handler = Callable[[Request], Coroutine[Any, Any, Response]]

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
    """An `APIRoute` served by a precompiled validator where its signature allows it."""

    def get_route_handler(self) -> Handler:
        """FastAPI's handler, behind the precompiled one when the signature is simple."""
        fastapi_handler = super().get_route_handler()
        route = _effective_route(self)
        plan = _Plan.of(route.dependant, embedded_body=route._embed_body_fields)
        if plan is None:
            return fastapi_handler
        return plan.handler(fastapi_handler, route.dependency_overrides_provider)


def _effective_route(route: APIRoute) -> Any:
    """The route as FastAPI builds this handler: with an inclusion's prefix and dependencies.

    FastAPI 0.16x builds an included route's handler once per inclusion and hands it that
    inclusion's view of the route in a ContextVar, which its own `get_route_handler` reads;
    a route that is not included is its own view.
    """
    context_var = getattr(fastapi.routing, "_effective_route_context_var", None)
    context = context_var.get() if context_var is not None else None
    if context is not None and getattr(context, "original_route", None) is route:
        return context
    return route


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

    def handler(self, fastapi_handler: Handler, overrides_provider: Any) -> Handler:
        """The request handler: this plan, or FastAPI's handler for what the plan cannot take."""
        call, dependencies = self.call, self.dependencies

        async def handle(request: Request) -> Response:
            if overrides_provider is not None and overrides_provider.dependency_overrides:
                return await fastapi_handler(request)
            values = await self.values(request)
            if values is None:
                return await fastapi_handler(request)
            if dependencies:
                await _solve(dependencies, request, values)
            response = await call(**values)
            if not isinstance(response, Response):
                msg = f"{call.__qualname__} is annotated to return a Response, not {response!r}"
                raise TypeError(msg)
            return response

        return handle


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
