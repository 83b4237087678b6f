"""`python -m service.stack.migrate`: the app's Alembic migrations to head, one runner at a
time, each statement waiting at most `MIGRATION_LOCK_TIMEOUT` for its locks.

What `make migrate`, `make release`, `make up`, Compose's `migrate` service and the Kubernetes
Job run, for any app: `alembic -c $MIGRATIONS upgrade head`, with `APP_PATH` first on the
import path, while this process holds a PostgreSQL advisory lock on `DATABASE_URL`'s
database. Two deploy steps started together apply each migration once: the second waits for
the lock, then finds the schema at head. The app's own `env.py` needs no lock of its own (the
notes service's takes one too, under another key). With `MIGRATIONS` empty there is nothing
to run.

Alembic runs under `service.stack.alembic_run`: a statement that cannot take its lock within
`MIGRATION_LOCK_TIMEOUT` gives up, its revision rolls back, and the whole upgrade is tried
again after a backoff (1 s, 2 s, 4 s... at most 30 s, with jitter), up to
`MIGRATION_ATTEMPTS` times; then this exits 75 naming the statement, the schema where it was.
"""

import asyncio
import os
import random
import sys
import time
from pathlib import Path

import asyncpg

from service.config import (
    ConfigurationError,
    FromEnvironment,
    Settings,
    WorkerSettings,
    load,
    setting,
)
from service.database.urls import asyncpg_dsn, quoted
from service.stack.alembic_run import LOCK_NOT_AVAILABLE

STACK_ROOT = Path(__file__).resolve().parents[2]
# Any constant bigint works; this one spells "stackmig" in ASCII.
STACK_MIGRATION_LOCK_ID = 0x737461636B6D6967
FIRST_RETRY_DELAY = 1.0
LONGEST_RETRY_DELAY = 30.0


class MigrationSettings(FromEnvironment):
    """How the migrations wait for the running app (`python -m service.stack.migrate`)."""

    migration_lock_timeout: float = setting(
        1.0,
        "seconds a migration's statement waits for a lock before it gives up and its "
        "revision is tried again (PostgreSQL lock_timeout): requests that need the table "
        "queue behind a waiting ALTER TABLE for at most this long; 0: wait forever",
        ge=0,
        le=600,
    )
    migration_attempts: int = setting(
        5,
        "tries of the upgrade before the migrations give up (exit 75), with a backoff of "
        "1, 2, 4... seconds (at most 30, jittered) between them",
        ge=1,
        le=100,
    )


def retry_delay(attempt: int) -> float:
    """Seconds to wait after the `attempt`-th try (from 1) gave up on a lock: doubling from
    one second, at most thirty, jittered down by up to half so that runners spread out."""
    ceiling = min(LONGEST_RETRY_DELAY, FIRST_RETRY_DELAY * 2.0 ** (attempt - 1))
    return ceiling * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not a secret)


def alembic_argv(settings: WorkerSettings, *command: str) -> list[str]:
    """The Alembic command line for the app's migrations, under `lock_timeout`."""
    assert settings.migrations is not None  # noqa: S101 (checked by the caller)
    ini = str(settings.migrations.resolve())
    return [sys.executable, "-m", "service.stack.alembic_run", "-c", ini, *command]


def alembic_env(settings: WorkerSettings, migration: MigrationSettings) -> dict[str, str]:
    """The environment Alembic runs in: `APP_PATH` first on the import path, then the stack's
    own root (Alembic runs under `service.stack.alembic_run` from the directory of
    `MIGRATIONS`, where the stack is importable only if installed: the image does not install
    it), and the lock timeout."""
    paths = [str(settings.app_path.resolve()), str(STACK_ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(filter(None, paths))),
        "MIGRATION_LOCK_TIMEOUT": str(migration.migration_lock_timeout),
    }


async def schema_revision(connection: asyncpg.Connection) -> str | None:
    """The revision Alembic's version table names (the first, with several heads); None
    before the first migration."""
    try:
        value = await connection.fetchval("SELECT version_num FROM alembic_version")
    except asyncpg.UndefinedTableError:
        return None
    return None if value is None else str(value)


async def upgrade(
    settings: WorkerSettings, database_url: str, migration: MigrationSettings | None = None
) -> int:
    """Run the migrations to head under the stack's lock, trying again while a statement
    gives up on its lock; Alembic's exit status (75 when every attempt gave up)."""
    migration = migration or MigrationSettings()
    if settings.migrations is None:
        print("migrations: MIGRATIONS is empty, nothing to run", flush=True)
        return 0
    if not settings.migrations.is_file():
        msg = f"MIGRATIONS={settings.migrations}: no such file"
        raise ConfigurationError(msg)
    connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=30)
    try:
        started = time.monotonic()
        if not await connection.fetchval(
            "SELECT pg_try_advisory_lock($1)", STACK_MIGRATION_LOCK_ID
        ):
            print(
                f"migrations: {settings.migrations}: waiting for the stack's migration lock "
                "(another runner is migrating)",
                flush=True,
            )
            await connection.execute("SELECT pg_advisory_lock($1)", STACK_MIGRATION_LOCK_ID)
        waited = time.monotonic() - started
        before = await schema_revision(connection)
        print(
            f"migrations: {settings.migrations} to head from {before or 'an empty schema'} "
            f"(stack lock after {waited:.1f}s, lock_timeout {migration.migration_lock_timeout:g}s)",
            flush=True,
        )
        status, attempts = await _attempts(settings, migration)
        after = await schema_revision(connection)
        took = time.monotonic() - started
        if status == 0:
            await keep_the_version_table_to_the_owner(connection)
            print(
                f"migrations: at {after} (was {before}) after {attempts} attempt(s) in {took:.1f}s",
                flush=True,
            )
        elif status == LOCK_NOT_AVAILABLE:
            print(
                f"migrations: gave up after {attempts} attempts in {took:.1f}s: a lock was "
                f"held longer than MIGRATION_LOCK_TIMEOUT={migration.migration_lock_timeout:g}s "
                f"each time (a long transaction?); the schema stays at {after}",
                file=sys.stderr,
                flush=True,
            )
        return status
    finally:
        await connection.close()


async def _attempts(settings: WorkerSettings, migration: MigrationSettings) -> tuple[int, int]:
    """Alembic's exit status and how many times it ran."""
    assert settings.migrations is not None  # noqa: S101 (checked by the caller)
    attempt = 1
    while True:
        process = await asyncio.create_subprocess_exec(
            *alembic_argv(settings, "upgrade", "head"),
            cwd=settings.migrations.resolve().parent,
            env=alembic_env(settings, migration),
        )
        status = await process.wait()
        if status != LOCK_NOT_AVAILABLE or attempt == migration.migration_attempts:
            return status, attempt
        delay = retry_delay(attempt)
        print(
            f"migrations: attempt {attempt} of {migration.migration_attempts} gave up on a "
            f"lock; again in {delay:.1f}s",
            flush=True,
        )
        await asyncio.sleep(delay)
        attempt += 1


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
        return asyncio.run(upgrade(settings, database_url, load(MigrationSettings)))
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (OSError, asyncpg.PostgresError) as exc:
        print(f"migrations: cannot take the lock on DATABASE_URL: {exc!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
