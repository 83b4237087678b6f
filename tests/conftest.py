"""Fixtures shared by the whole suite: a real PostgreSQL, a migrated database, the app."""

import logging
import sys
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
from hypothesis import settings
from sqlalchemy.engine import URL

from tests.apps import app_client
from tests.postgres import fresh_database, migrate, postgres_server
from tests.stack import Stack, running_stack

# Where PYTHONDONTWRITEBYTECODE is set (these machines set it), pytest would rewrite the asserts
# of every test module afresh on each run: two seconds of every `make test-fast`. The modules
# imported from here on cache their rewritten code in __pycache__, which git and the build
# context ignore, as uv's compile-bytecode does for the dependencies.
sys.dont_write_bytecode = False

# The load tests send thousands of requests; httpx would log a line for each.
logging.getLogger("httpx").setLevel(logging.WARNING)

# The same examples on every run, so that a submission is never refused by chance; a search
# for new failures runs with --hypothesis-profile=explore (new random examples each run).
settings.register_profile("repeatable", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile("repeatable")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by what it needs, from the fixtures it uses, so the tiers cannot drift:
    `database` (a PostgreSQL server), `stack` (nginx, gunicorn and the rest, started).
    `make test-fast` runs what needs neither."""
    for item in items:
        if "tests/containers/" in item.nodeid:
            item.add_marker(pytest.mark.containers)
        fixtures = set(getattr(item, "fixturenames", ()))
        if any(name.endswith("stack") for name in fixtures):
            item.add_marker(pytest.mark.stack)
        if "pg_server" in fixtures or item.get_closest_marker("stack"):
            item.add_marker(pytest.mark.database)


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


@pytest.fixture(scope="session")
async def client(database_url: URL) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client bound to the app, with the app's lifespan running."""
    async with app_client(database_url) as client:
        yield client


@pytest.fixture(scope="session")
def stack(pg_server: URL) -> Iterator[Stack]:
    """The real stack (nginx, gunicorn with two workers) on a database of its own, which `up`
    migrates as `make up` does."""
    with fresh_database(pg_server) as url, running_stack(url, workers=2) as running:
        yield running
