"""Readiness and failure: a database that is away or behind gives 503, quickly."""

import time

import asyncpg
from sqlalchemy.engine import URL, make_url

from deploy.native.processes import free_port
from service.database.urls import asyncpg_dsn
from tests.apps import app_client
from tests.postgres import fresh_database, locked_table, migrate


async def test_unreachable_database_gives_503_fast() -> None:
    closed = make_url(f"postgresql+asyncpg://postgres@127.0.0.1:{free_port()}/notes")
    async with app_client(closed, db_connect_timeout=1.0, db_pool_timeout=1.0) as client:
        started = time.monotonic()
        ready = await client.get("/readyz")
        note = await client.get("/api/v1/notes/1")
        created = await client.post("/api/v1/notes", json={"text": "x"})
        elapsed = time.monotonic() - started
        live = await client.get("/healthz")

    assert ready.status_code == 503
    assert ready.json() == {"status": "unavailable", "reason": "database unreachable"}
    assert note.status_code == 503
    assert created.status_code == 503
    assert note.json() == {"detail": "Database unavailable"}
    assert note.headers["retry-after"] == "1"
    assert elapsed < 5, f"three requests took {elapsed:.1f}s against a closed port"
    assert live.status_code == 200


async def test_readyz_on_an_unmigrated_database(pg_server: URL) -> None:
    with fresh_database(pg_server) as url:
        async with app_client(url) as client:
            response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert "not migrated" in response.json()["reason"]


async def test_readyz_on_a_database_behind_head(pg_server: URL) -> None:
    """Behind: a revision this code ships, short of its head (its migrations have not run)."""
    with fresh_database(pg_server) as url:
        assert migrate(url, "upgrade", "head").returncode == 0
        assert migrate(url, "downgrade", "-1").returncode == 0
        async with app_client(url) as client:
            response = await client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["reason"].startswith("schema at 0002_create_idempotency_keys, expected")


async def test_readyz_on_a_database_ahead_of_the_code(pg_server: URL) -> None:
    """Ahead: a revision this code does not know, the next release's, migrated before the
    reload that brings its code; the running code stays ready (docs/operations.md)."""
    with fresh_database(pg_server) as url:
        assert migrate(url, "upgrade", "head").returncode == 0
        connection = await asyncpg.connect(asyncpg_dsn(url))
        await connection.execute("UPDATE alembic_version SET version_num = '0099_next_release'")
        await connection.close()
        async with app_client(url) as client:
            response = await client.get("/readyz")
    assert response.status_code == 200


async def test_statement_timeout_gives_503_without_sql(database_url: URL) -> None:
    async with (
        locked_table(database_url),
        app_client(database_url, db_statement_timeout=0.2) as client,
    ):
        started = time.monotonic()
        response = await client.get("/api/v1/notes", params={"limit": 5})
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.json() == {"detail": "Database unavailable"}
    assert elapsed < 3
