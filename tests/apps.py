"""The app under test, in process, with its lifespan running."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.engine import URL
from starlette.types import ASGIApp

from service.config import Settings, load_settings
from service.main import create_app
from service.stack.asgi import wrap


def settings_for(url: URL, **overrides: object) -> Settings:
    """Settings that point the service at `url`."""
    return load_settings(
        database_url=url.render_as_string(hide_password=False),
        environment="test",
        **overrides,
    )


@asynccontextmanager
async def serving(app: ASGIApp) -> AsyncIterator[httpx.AsyncClient]:
    """A client of `app`, in process, its lifespan running."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://notes.test") as client:
            yield client


@asynccontextmanager
async def app_client(url: URL, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """A client for a fresh app on `url` behind the stack, its lifespan (engine and pool)
    running."""
    settings = settings_for(url, **overrides)
    async with serving(wrap(create_app(settings), settings)) as client:
        yield client


FAILING_ROUTE = "/test/fail"


def failing_app() -> FastAPI:
    """The service with one more route, which fails as a bug in a handler would.

    gunicorn serves it as `tests.apps:failing_app()` (APP) for the fault tests; the
    real app has no such route.
    """
    app = create_app()

    @app.get(FAILING_ROUTE, include_in_schema=False)
    async def fail() -> None:
        msg = "a handler that fails"
        raise RuntimeError(msg)

    return app
