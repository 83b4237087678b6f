"""The database layer decides, once, when the database is unavailable; everything else it
raises as it is. And the codecs the idempotency store relies on are its own."""

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL, make_url

from deploy.native.processes import free_port
from service.database.connections import Database, DatabaseUnavailableError, create_database
from service.main import create_app
from service.stack.asgi import StackApp, wrap
from tests.apps import settings_for
from tests.postgres import locked_table


@pytest.fixture
async def database(database_url: URL) -> AsyncIterator[Database]:
    """The app's own Database on the test database, with a short statement timeout."""
    database = create_database(settings_for(database_url, db_statement_timeout=0.2))
    try:
        yield database
    finally:
        await database.dispose()


async def test_a_statement_past_the_statement_timeout_is_unavailability(
    database: Database, database_url: URL
) -> None:
    async with locked_table(database_url):
        with pytest.raises(DatabaseUnavailableError) as raised:
            async with database.connection() as connection:
                await connection.fetch("SELECT * FROM notes")
    assert isinstance(raised.value.__cause__, asyncpg.QueryCanceledError)


async def test_a_closed_port_and_a_full_pool_are_unavailability(database_url: URL) -> None:
    closed = make_url(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/notes")
    nowhere = create_database(settings_for(closed, db_connect_timeout=1.0))
    with pytest.raises(DatabaseUnavailableError):
        async with nowhere.connection():
            pass
    await nowhere.dispose()
    one = create_database(settings_for(database_url, db_pool_size=1, db_pool_timeout=0.2))
    try:
        async with one.connection():
            with pytest.raises(DatabaseUnavailableError, match=r"within 0\.2s"):
                async with one.connection():
                    pass
    finally:
        await one.dispose()


async def test_a_lost_connection_is_unavailability(database: Database) -> None:
    async def query_after_its_backend_is_terminated() -> None:
        async with database.connection() as connection:
            pid = await connection.fetchval("SELECT pg_backend_pid()")
            async with database.connection() as other:
                await other.execute("SELECT pg_terminate_backend($1)", pid)
            await connection.fetchval("SELECT 1")

    with pytest.raises(DatabaseUnavailableError):
        await query_after_its_backend_is_terminated()
    # The lost connection left the pool: the next one works.
    async with database.connection() as connection:
        assert await connection.fetchval("SELECT 1") == 1


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        ("SELECT 1 / 0", asyncpg.DivisionByZeroError),
        ("INSERT INTO notes (text) VALUES (NULL)", asyncpg.NotNullViolationError),
        ("SELECT * FROM no_such_table", asyncpg.UndefinedTableError),
    ],
)
async def test_other_database_errors_are_raised_as_they_are(
    database: Database, statement: str, error: type[Exception]
) -> None:
    with pytest.raises(error):
        async with database.connection() as connection:
            await connection.execute(statement)


async def test_jsonb_is_read_and_written_as_python_objects(database: Database) -> None:
    value = {"content-type": "application/json", "etag": '"1-1"', "n": [1, 2.5, None, True]}
    async with database.connection() as connection:
        assert await connection.fetchval("SELECT $1::jsonb", value) == value
        assert await connection.fetchval("""SELECT '{"a": {"b": 1}}'::jsonb""") == {"a": {"b": 1}}


def app_with_failing_route(url: URL, error: Exception) -> StackApp:
    """The app with one more route, which raises `error` outside any database call, behind
    the stack."""
    settings = settings_for(url)
    app = create_app(settings)

    @app.get("/test/raise")
    async def fail() -> None:
        raise error

    return wrap(app, settings)


@pytest.mark.parametrize(
    "error", [OSError("the disk"), TimeoutError("a client of another service"), ConnectionError()]
)
async def test_errors_outside_the_database_are_never_database_unavailable(
    database_url: URL, error: Exception
) -> None:
    transport = httpx.ASGITransport(app=app_with_failing_route(database_url, error))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/test/raise")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal Server Error"}
