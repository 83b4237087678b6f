"""A PostgreSQL server for the test run, and fresh databases on it.

Order of preference: TEST_DATABASE_URL (a server URL; its database name is ignored), a server
on 127.0.0.1:5432 that lets user postgres in, and else a throwaway cluster started with the
local binaries by `deploy/native/pg-cluster`.
"""

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
from sqlalchemy.engine import URL, make_url

from deploy.native.processes import free_port
from service.database.urls import asyncpg_dsn

ROOT = Path(__file__).resolve().parent.parent
PG_CLUSTER = ROOT / "deploy" / "native" / "pg-cluster"
DEFAULT_SERVER = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"

T = TypeVar("T")


def run_sync(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion from sync code, even inside a running event loop."""
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coroutine).result()


async def _answers(url: URL) -> bool:
    try:
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    await connection.close()
    return True


async def backends(server: URL, database: str) -> int:
    """Client connections PostgreSQL has open to `database` (`server` may be PgBouncer's:
    the statement is prepared unnamed)."""
    connection = await asyncpg.connect(asyncpg_dsn(server), statement_cache_size=0)
    try:
        count: int = await connection.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = $1 AND backend_type = 'client backend'",
            database,
        )
        return count
    finally:
        await connection.close()


async def admin_execute(server: URL, *statements: str) -> None:
    """Run statements on the server's maintenance database."""
    connection = await asyncpg.connect(asyncpg_dsn(server.set(database="postgres")))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


@contextmanager
def postgres_server(workdir: Path) -> Iterator[URL]:
    """Yield the URL of a server the tests may create databases on."""
    explicit = os.environ.get("TEST_DATABASE_URL")
    if explicit:
        url = make_url(explicit).set(drivername="postgresql+asyncpg")
        if not run_sync(_answers(url.set(database="postgres"))):
            msg = f"TEST_DATABASE_URL does not answer: {url!r}"
            raise RuntimeError(msg)
        yield url.set(database="postgres")
        return
    local = make_url(DEFAULT_SERVER)
    if run_sync(_answers(local)):
        yield local
        return
    datadir = workdir / "postgres"
    port = free_port()
    # A throwaway cluster: no fsync is safe here, since nothing in it must survive a crash.
    subprocess.run(
        [PG_CLUSTER, "start", datadir, str(port), "--unsafe-no-fsync", "--trust"], check=True
    )
    try:
        yield local.set(port=port)
    finally:
        subprocess.run([PG_CLUSTER, "stop", datadir], check=False)


@contextmanager
def fresh_database(server: URL, prefix: str = "notes_test") -> Iterator[URL]:
    """Create a uniquely named database, yield its URL, drop it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    run_sync(admin_execute(server, f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name)
    finally:
        run_sync(admin_execute(server, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        # The app role a stack made for it (deploy.native.postgres): nothing else holds it.
        run_sync(admin_execute(server, f'DROP ROLE IF EXISTS "{name}_app"'))


@asynccontextmanager
async def locked_table(database: URL, table: str = "notes") -> AsyncIterator[asyncpg.Connection]:
    """Hold an ACCESS EXCLUSIVE lock on `table` for the block: every read and write of it
    waits until the block ends. Yields the connection that holds it, in its transaction."""
    connection = await asyncpg.connect(asyncpg_dsn(database))
    try:
        async with connection.transaction():
            await connection.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
            yield connection
    finally:
        await connection.close()


def migrate(database: URL, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the Alembic CLI against `database`, as `make migrate` does."""
    return subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database.render_as_string(hide_password=False)},
        capture_output=True,
        text=True,
        check=False,
    )
