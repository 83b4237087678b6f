"""The app under test, in process, with its lifespan running."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import URL

from service.config import Settings, load_settings
from service.main import create_app


def settings_for(url: URL, **overrides: object) -> Settings:
    """Settings that point the service at `url`."""
    return load_settings(
        database_url=url.render_as_string(hide_password=False),
        environment="test",
        **overrides,
    )


@asynccontextmanager
async def app_client(url: URL, **overrides: object) -> AsyncIterator[httpx.AsyncClient]:
    """A client for a fresh app on `url`, its lifespan (engine and pool) running."""
    app = create_app(settings_for(url, **overrides))
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://notes.test") as client:
            yield client
