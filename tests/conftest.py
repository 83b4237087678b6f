"""Fixtures shared by the whole suite: a real PostgreSQL, a migrated database, the app."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy.engine import URL

from service.config import Settings, load_settings
from service.main import create_app
from tests.postgres import fresh_database, migrate, postgres_server


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[URL]:
    """The PostgreSQL server of this run (maintenance database)."""
    with postgres_server(tmp_path_factory.mktemp("pg")) as url:
        yield url


@pytest.fixture(scope="session")
def database_url(pg_server: URL) -> Iterator[URL]:
    """A database made for this run and migrated to head by the Alembic CLI."""
    with fresh_database(pg_server) as url:
        result = migrate(url, "upgrade", "head")
        assert result.returncode == 0, result.stderr
        yield url


def settings_for(url: URL, **overrides: object) -> Settings:
    """Settings that point the service at `url`."""
    return load_settings(
        database_url=url.render_as_string(hide_password=False),
        environment="test",
        **overrides,
    )


@pytest.fixture(scope="session")
def settings(database_url: URL) -> Settings:
    """Settings for the app under test."""
    return settings_for(database_url)


@pytest.fixture(scope="session")
async def client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client bound to the app, with the app's lifespan running."""
    app = create_app(settings)
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://notes.test") as client:
            yield client


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository root."""
    return Path(__file__).resolve().parent.parent
