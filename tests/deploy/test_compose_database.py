"""Compose's database roles, run for real without Compose: deploy/postgres/init-app-role.sh as
the postgres image runs it on a first start (as POSTGRES_USER, the image's superuser, which
owns the database), then Compose's migrate command as that owner; then what the app role may
do. The image cannot be pulled here; its initdb step is a shell script and psql, which can."""

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import asyncpg
import pytest
from sqlalchemy.engine import URL

from service.database.urls import asyncpg_dsn
from tests.postgres import PG_CLUSTER, ROOT, admin_execute, fresh_database, run_sync

INIT_SCRIPT = ROOT / "deploy" / "postgres" / "init-app-role.sh"


def psql_bindir() -> str:
    return subprocess.run(
        [PG_CLUSTER, "bindir"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def compose_database(pg_server: URL) -> Iterator[tuple[URL, URL]]:
    """A database initialised as Compose's first start does, and migrated as Compose's
    migrate service does: the owner's URL and the app role's."""
    with fresh_database(pg_server, prefix="compose") as url:
        owner, app = f"{url.database}_owner", f"{url.database}_app"
        password = uuid.uuid4().hex
        run_sync(
            admin_execute(
                url,
                f'CREATE ROLE "{owner}" LOGIN SUPERUSER',  # the image's POSTGRES_USER
                f'ALTER DATABASE "{url.database}" OWNER TO "{owner}"',
            )
        )
        env = {
            "PATH": f"{psql_bindir()}:{os.environ['PATH']}",
            "PGHOST": url.host or "127.0.0.1",
            "PGPORT": str(url.port or 5432),
            "POSTGRES_USER": owner,
            "POSTGRES_DB": str(url.database),
            "APP_DB_USER": app,
            "APP_DB_PASSWORD": password,
            "STACK_SQL_DIR": str(INIT_SCRIPT.parent),
        }
        init = subprocess.run(
            ["/bin/sh", str(INIT_SCRIPT)], env=env, capture_output=True, text=True, check=False
        )
        owner_url, app_url = url.set(username=owner), url.set(username=app, password=password)
        try:
            assert init.returncode == 0, init.stdout + init.stderr
            migrate = subprocess.run(
                [sys.executable, "-m", "service.stack.migrate"],
                env={**os.environ, "DATABASE_URL": owner_url.render_as_string(False)},
                cwd=ROOT, capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert migrate.returncode == 0, migrate.stdout + migrate.stderr
            yield owner_url, app_url
        finally:
            run_sync(admin_execute(url, f'DROP DATABASE "{url.database}" WITH (FORCE)'))
            run_sync(admin_execute(url, f'DROP ROLE IF EXISTS "{owner}"', f'DROP ROLE "{app}"'))


async def test_the_app_role_of_composes_database_may_only_touch_rows(
    compose_database: tuple[URL, URL],
) -> None:
    _, app_url = compose_database
    app = await asyncpg.connect(asyncpg_dsn(app_url))
    try:
        note = await app.fetchval("INSERT INTO notes (text) VALUES ('compose') RETURNING id")
        assert await app.fetchval("SELECT text FROM notes WHERE id = $1", note) == "compose"
        await app.execute("DELETE FROM notes WHERE id = $1", note)
        assert await app.fetchval("SELECT count(*) FROM alembic_version") == 1
        attributes = await app.fetchrow(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = current_user"
        )
        assert tuple(attributes) == (False, False, False)
        for statement in (
            "DROP TABLE notes",
            "TRUNCATE notes",
            "CREATE TABLE intruder (id int)",
            "UPDATE alembic_version SET version_num = version_num",
            "COPY (SELECT 1) TO PROGRAM 'true'",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app.execute(statement)
    finally:
        await app.close()


async def test_no_other_role_may_connect_to_composes_database(
    compose_database: tuple[URL, URL],
) -> None:
    owner_url, _ = compose_database
    stranger = f"stranger_{uuid.uuid4().hex[:8]}"
    await admin_execute(owner_url, f'CREATE ROLE "{stranger}" LOGIN')
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await asyncpg.connect(asyncpg_dsn(owner_url.set(username=stranger)))
    finally:
        await admin_execute(owner_url, f'DROP ROLE "{stranger}"')
