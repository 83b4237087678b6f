"""What the two database roles may do once the image's migration command ran as the owner:
the owner owns every table at head; the app role reads and writes notes, reads the version
table (readiness asks it) and may neither write it nor change the schema."""

import asyncpg
import pytest
from sqlalchemy.engine import URL

from service.database.urls import asyncpg_dsn
from service.stack.heads import alembic_heads

REFUSED_TO_THE_APP = (
    "UPDATE alembic_version SET version_num = version_num",
    "INSERT INTO alembic_version VALUES ('intruder')",
    "DELETE FROM alembic_version",
    "CREATE TABLE intruder (id int)",
    "ALTER TABLE notes ADD COLUMN intruder int",
    "CREATE INDEX intruder ON notes (id)",
    "DROP TABLE notes",
    "TRUNCATE notes",
)


async def check_the_two_roles(owner: URL, app: URL) -> str:
    """Check the schema, its owner and the app role's rights; the revision it is at."""
    connection = await asyncpg.connect(asyncpg_dsn(owner))
    try:
        revision = str(await connection.fetchval("SELECT version_num FROM alembic_version"))
        rows = await connection.fetch(
            "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
        )
    finally:
        await connection.close()
    assert revision in alembic_heads()
    tables = {row["tablename"]: row["tableowner"] for row in rows}
    assert {"notes", "alembic_version", "idempotency_keys"} <= tables.keys()
    assert set(tables.values()) == {owner.username}, tables

    connection = await asyncpg.connect(asyncpg_dsn(app))
    try:
        note = await connection.fetchval("INSERT INTO notes (text) VALUES ('app') RETURNING id")
        await connection.execute("UPDATE notes SET completed = true WHERE id = $1", note)
        assert await connection.fetchval("SELECT completed FROM notes WHERE id = $1", note)
        await connection.execute("DELETE FROM notes WHERE id = $1", note)
        assert await connection.fetchval("SELECT version_num FROM alembic_version") == revision
        for statement in REFUSED_TO_THE_APP:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await connection.execute(statement)
    finally:
        await connection.close()
    return revision
