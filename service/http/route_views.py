"""FastAPI's views of an included route, the one place the stack reads them.

FastAPI 0.16x does not copy a router's routes into the router that includes it: it keeps, per
inclusion, a view of each route with the inclusion's prefixes and dependencies, builds the
view's handler with it, and puts the view that matched a request in the scope. A route that is
not included is its own view. Older FastAPI copied routes at inclusion, so every route there is
its own view, and these functions say so.
"""

from typing import Any

import fastapi.routing
from starlette.routing import BaseRoute
from starlette.types import Scope

_FASTAPI_SCOPE = "fastapi"
_VIEW_IN_SCOPE = "effective_route_context"


def serving_view(scope: Scope, route: BaseRoute) -> Any:
    """The view of `route` that matched this request (as `APIRoute.handle` reads it)."""
    view = scope.get(_FASTAPI_SCOPE, {}).get(_VIEW_IN_SCOPE)
    return view if getattr(view, "original_route", None) is route else route


def building_view(route: BaseRoute) -> Any:
    """The view of `route` whose handler FastAPI is building now (as `APIRoute`'s own
    `get_route_handler` reads it, from a ContextVar)."""
    context_var = getattr(fastapi.routing, "_effective_route_context_var", None)
    view = context_var.get() if context_var is not None else None
    return view if getattr(view, "original_route", None) is route else route
