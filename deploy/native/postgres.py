"""PostgreSQL: DATABASE_URL when set, else the private cluster in the run dir; migrations."""

import asyncio
import subprocess
import sys

import asyncpg

from deploy.native.processes import fail, log, run_helper
from deploy.native.state import Stack, StackState
from service.config import ROOT, load_settings


def ensure_database(stack: Stack) -> StackState:
    """Use DATABASE_URL, or start the private cluster; return what to remember."""
    settings = load_settings()
    if settings.database_url_is_explicit:
        log("database: DATABASE_URL")
        return StackState(database_url=settings.sqlalchemy_url, private_postgres=False)
    run_helper("install-deps", "postgres")
    start_private(stack)
    port = stack.settings.postgres_port
    name = settings.stack_name.replace("-", "_")
    asyncio.run(create_database(f"postgresql://postgres@127.0.0.1:{port}/postgres", name))
    url = f"postgresql+asyncpg://postgres@127.0.0.1:{port}/{name}"
    return StackState(database_url=url, private_postgres=True)


async def create_database(admin_dsn: str, name: str) -> None:
    """Create database `name` on the server `admin_dsn` reaches, unless it exists."""
    connection = await asyncpg.connect(admin_dsn)
    try:
        if not await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


def start_private(stack: Stack) -> None:
    """Start (initdb first if needed) the private cluster; durable, as PostgreSQL ships."""
    run_helper("pg-cluster", "start", stack.layout.postgres_dir, str(stack.settings.postgres_port))


def stop_private(stack: Stack) -> None:
    """Stop the private cluster if it runs (fast shutdown: nothing committed is lost)."""
    run_helper("pg-cluster", "stop", stack.layout.postgres_dir)


def migrate(env: dict[str, str]) -> None:
    """The app's migrations to head (MIGRATIONS), as `make migrate` runs them: under the
    stack's migration lock (`service.stack.migrate`)."""
    log(f"migrations: {env.get('MIGRATIONS') or 'none'} to head")
    result = subprocess.run(
        [sys.executable, "-m", "service.stack.migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        fail(f"migrations failed:\n{result.stdout}{result.stderr}")
