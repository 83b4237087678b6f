"""Requests are labelled by the template of the route that served them, in any app: routers
nested with prefixes given at `include_router`, mounted sub-applications, routes added late;
and the in-progress gauge counts the requests in flight by the same labels."""

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from prometheus_client import REGISTRY
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from service.http.middleware import RequestMiddleware
from service.observability.requests import UNMATCHED_ROUTE, RequestObserver


async def raw_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    """A mounted app that routes nothing itself, as static files are."""
    await PlainTextResponse("raw")(scope, receive, send)


def nested_app(entered: asyncio.Queue[int], release: asyncio.Event) -> FastAPI:
    """Routers three deep with prefixes at include_router, a FastAPI app, a Starlette app and
    a bare ASGI app mounted, and a route added after the rest. A POST to `.../hold` says it
    has `entered`, then waits for `release`."""
    items = APIRouter()

    @items.get("/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        return {"id": item_id}

    @items.post("/{item_id}/hold")
    async def hold(item_id: int) -> dict[str, int]:
        entered.put_nowait(item_id)
        await release.wait()
        return {"id": item_id}

    api = APIRouter(prefix="/v1")
    api.include_router(items, prefix="/items")
    app = FastAPI()
    app.include_router(api, prefix="/api")

    sub = FastAPI()

    @sub.get("/hello/{name}")
    async def hello(name: str) -> dict[str, str]:
        return {"hello": name}

    async def page(request: Request) -> Response:
        return PlainTextResponse(request.path_params["slug"])

    app.mount("/sub", sub)
    app.mount("/pages", Starlette(routes=[Route("/p/{slug}", page)]))
    app.mount("/static", raw_asgi)

    @app.get("/late/{x}")
    async def late(x: int) -> dict[str, int]:
        return {"x": x}

    return app


@dataclass
class Served:
    """A client of the nested app behind the stack's request middleware, its observer, and
    the queue and event of its held requests."""

    client: httpx.AsyncClient
    observer: RequestObserver
    entered: asyncio.Queue[int] = field(default_factory=asyncio.Queue)
    release: asyncio.Event = field(default_factory=asyncio.Event)


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    """The nested app, served in process behind the request middleware."""
    entered: asyncio.Queue[int] = asyncio.Queue()
    release = asyncio.Event()
    observer = RequestObserver(access_log=True)
    app = RequestMiddleware(nested_app(entered, release), timeout=10, observer=observer)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        yield Served(client, observer, entered, release)


def requests_total(method: str, route: str, status: str) -> float:
    labels = {"method": method, "route": route, "status": status}
    return REGISTRY.get_sample_value("http_requests_total", labels) or 0.0


def in_progress(method: str, route: str) -> float:
    labels = {"method": method, "route": route}
    return REGISTRY.get_sample_value("http_requests_in_progress", labels) or 0.0


CASES = [
    ("/api/v1/items/3", "/api/v1/items/{item_id}", "200"),
    ("/api/v1/items/x", "/api/v1/items/{item_id}", "422"),
    ("/sub/hello/bob", "/sub/hello/{name}", "200"),
    ("/pages/p/intro", "/pages/p/{slug}", "200"),
    ("/static/css/site.css", "/static/{path}", "200"),
    ("/late/2", "/late/{x}", "200"),
    ("/sub/nothing/here", "/sub/{path}", "404"),
    ("/wp-login.php", UNMATCHED_ROUTE, "404"),
    ("/api/v1/elsewhere", UNMATCHED_ROUTE, "404"),
]


async def test_each_request_is_labelled_by_the_route_that_served_it(
    capfd: pytest.CaptureFixture[str], served: Served
) -> None:
    expected = Counter((route, status) for _, route, status in CASES)
    before = {key: requests_total("GET", *key) for key in expected}
    for path, _, status in CASES:
        assert str((await served.client.get(path)).status_code) == status, path
    assert {key: requests_total("GET", *key) - before[key] for key in expected} == expected
    lines = [json.loads(line) for line in capfd.readouterr().out.splitlines()]
    assert [(line["path"], line["route"]) for line in lines] == [
        (path, route) for path, route, _ in CASES
    ]


async def test_requests_in_flight_are_counted_by_their_route(served: Served) -> None:
    client, observer = served.client, served.observer
    held = [asyncio.create_task(client.post(f"/api/v1/items/{n}/hold")) for n in range(3)]
    assert sorted([await served.entered.get() for _ in held]) == [0, 1, 2]
    observer.sample_in_progress()
    assert in_progress("POST", "/api/v1/items/{item_id}/hold") == 3
    assert in_progress("POST", UNMATCHED_ROUTE) == 0
    served.release.set()
    assert [(await task).status_code for task in held] == [200, 200, 200]
    assert not observer.in_flight
    observer.sample_in_progress()
    assert in_progress("POST", "/api/v1/items/{item_id}/hold") == 0
