"""`python -m service.stack.migrate`: the app's Alembic migrations to head, one runner at a time.

What `make migrate`, `make up`, Compose's `migrate` service and the Kubernetes Job run, for
any app: `alembic -c $MIGRATIONS upgrade head`, with `APP_PATH` first on the import path,
while this process holds a PostgreSQL advisory lock on `DATABASE_URL`'s database. Two deploy
steps started together apply each migration once: the second waits for the lock, then finds
the schema at head. The app's own `env.py` needs no lock of its own (the notes service's
takes one too, under another key). With `MIGRATIONS` empty there is nothing to run.
"""

import asyncio
import os
import sys
import time

import asyncpg

from service.config import ConfigurationError, Settings, WorkerSettings, load
from service.database.urls import asyncpg_dsn, quoted

# Any constant bigint works; this one spells "stackmig" in ASCII.
STACK_MIGRATION_LOCK_ID = 0x737461636B6D6967


def alembic_argv(settings: WorkerSettings, *command: str) -> list[str]:
    """The Alembic command line for the app's migrations."""
    assert settings.migrations is not None  # noqa: S101 (checked by the caller)
    return [sys.executable, "-m", "alembic", "-c", str(settings.migrations.resolve()), *command]


def alembic_env(settings: WorkerSettings) -> dict[str, str]:
    """The environment Alembic runs in: `APP_PATH` first on the import path."""
    app_path = str(settings.app_path.resolve())
    python_path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [app_path, python_path]))}


async def upgrade(settings: WorkerSettings, database_url: str) -> int:
    """Run the migrations to head under the stack's lock; Alembic's exit status."""
    if settings.migrations is None:
        print("migrations: MIGRATIONS is empty, nothing to run", flush=True)
        return 0
    if not settings.migrations.is_file():
        msg = f"MIGRATIONS={settings.migrations}: no such file"
        raise ConfigurationError(msg)
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=30)
    try:
        started = time.monotonic()
        await connection.execute("SELECT pg_advisory_lock($1)", STACK_MIGRATION_LOCK_ID)
        waited = time.monotonic() - started
        print(f"migrations: {settings.migrations} to head (lock after {waited:.1f}s)", flush=True)
        process = await asyncio.create_subprocess_exec(
            *alembic_argv(settings, "upgrade", "head"),
            cwd=settings.migrations.resolve().parent,
            env=alembic_env(settings),
        )
        status = await process.wait()
        if status == 0:
            await keep_the_version_table_to_the_owner(connection)
        return status
    finally:
        await connection.close()


async def keep_the_version_table_to_the_owner(connection: asyncpg.Connection) -> None:
    """Alembic's version table is the migrations' own: the owner's default privileges gave the
    app role DML on it, as on every table; take the writes back, leaving the read readiness
    needs. Run as the owner (who made the table)."""
    rows = await connection.fetch(
        """
        SELECT DISTINCT grantee, table_schema, table_name
        FROM information_schema.role_table_grants
        WHERE table_name = 'alembic_version' AND grantee NOT IN (current_user, 'PUBLIC')
          AND privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
        """
    )
    for row in rows:
        table = f"{quoted(row['table_schema'])}.{quoted(row['table_name'])}"
        privileges = "INSERT, UPDATE, DELETE, TRUNCATE"
        await connection.execute(f"REVOKE {privileges} ON {table} FROM {quoted(row['grantee'])}")


def main() -> int:
    """Exit with Alembic's status; a bad setting exits 2 with its message."""
    try:
        settings = load(WorkerSettings)
        database_url = load(Settings).sqlalchemy_url
        return asyncio.run(upgrade(settings, database_url))
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"migrations: cannot take the lock on DATABASE_URL: {exc!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
