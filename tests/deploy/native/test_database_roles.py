"""Least privilege in the database: the private cluster trusts no one, the workers log in as a
role that may only touch rows, and the passwords live in files no one else can read.

One stack on its private cluster, as `make up` runs it with no DATABASE_URL, with PgBouncer in
front (POOLER=pgbouncer), so that the roles are proven through the pooler too. The DATABASE_URL
mode's app role is checked on the suite's shared stack.
"""

import os
import pwd
import stat
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL

from service.database.urls import asyncpg_dsn
from tests.postgres import PG_CLUSTER
from tests.stack import Stack, running_stack

OWNER, APP = "notes_owner", "notes_app"


@pytest.fixture(scope="module")
def private_stack() -> Iterator[Stack]:
    with running_stack(None, workers=2, extra_env={"POOLER": "pgbouncer"}) as stack:
        yield stack


def as_role(stack: Stack, role: str, password: str | None = None) -> URL:
    """The stack's database, straight to PostgreSQL, as `role` with `password` (else the one
    the stack keeps for it)."""
    kept = stack.native.secrets.password(role)
    return stack.database.set(username=role, password=password or kept)


@pytest.fixture
async def app_role(private_stack: Stack) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(asyncpg_dsn(as_role(private_stack, APP)))
    try:
        yield connection
    finally:
        await connection.close()


async def sessions_by_role(database: URL, application: str) -> set[str]:
    """The roles of the sessions on `database` whose application_name is
    `<application>:<pid>`."""
    connection = await asyncpg.connect(asyncpg_dsn(database))
    try:
        rows = await connection.fetch(
            "SELECT DISTINCT usename FROM pg_stat_activity "
            "WHERE application_name LIKE $1 AND datname = current_database()",
            f"{application}:%",
        )
    finally:
        await connection.close()
    return {row["usename"] for row in rows}


async def test_the_workers_log_in_as_the_app_role_and_the_api_works(private_stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=private_stack.url, timeout=30) as client:
        created = await client.post("/api/v1/notes", json={"text": "least privilege"})
        assert created.status_code == 201, created.text
        note = created.json()["id"]
        assert (await client.patch(f"/api/v1/notes/{note}", json={"completed": True})).is_success
        assert (await client.get("/api/v1/notes/stats")).status_code == 200
        assert (await client.delete(f"/api/v1/notes/{note}")).status_code == 204
    assert await sessions_by_role(private_stack.database, "notes") == {APP}
    owner = await asyncpg.connect(asyncpg_dsn(private_stack.database))
    try:
        attributes = await owner.fetchrow(
            "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = $1", APP
        )
        assert tuple(attributes) == (False, False, False)
        tables = await owner.fetch(
            "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
        )
    finally:
        await owner.close()
    assert {row["tableowner"] for row in tables} == {OWNER}
    assert {"notes", "alembic_version"} <= {row["tablename"] for row in tables}


@pytest.mark.parametrize(
    "statement",
    [
        "DROP TABLE notes",
        "TRUNCATE notes",
        "ALTER TABLE notes ADD COLUMN intruder int",
        "CREATE TABLE intruder (id int)",
        "CREATE SCHEMA intruder",
        "COPY (SELECT 1) TO PROGRAM 'true'",
        "UPDATE alembic_version SET version_num = version_num",
        "CREATE ROLE intruder",
    ],
)
async def test_the_app_role_is_refused_anything_but_rows(
    app_role: asyncpg.Connection, statement: str
) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await app_role.execute(statement)


async def test_a_table_a_later_migration_adds_is_the_app_roles_without_a_grant(
    private_stack: Stack, app_role: asyncpg.Connection
) -> None:
    """What a migration does, as the owner: a new table with a sequence. The app role may use
    its rows at once (the owner's default privileges), and still not its schema."""
    owner = await asyncpg.connect(asyncpg_dsn(private_stack.database))
    try:
        await owner.execute("CREATE TABLE later (id bigserial PRIMARY KEY, body text)")
        try:
            await app_role.execute("INSERT INTO later (body) VALUES ('x'), ('y')")
            assert await app_role.fetchval("SELECT count(*) FROM later") == 2
            await app_role.execute("DELETE FROM later WHERE body = 'x'")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await app_role.execute("DROP TABLE later")
        finally:
            await owner.execute("DROP TABLE later")
    finally:
        await owner.close()


@pytest.mark.parametrize(
    ("role", "password"),
    [
        ("postgres", None),  # the superuser: peer on the socket only
        ("postgres", "postgres"),
        (APP, "wrong"),
        (OWNER, "wrong"),
        (APP, ""),
    ],
    ids=["superuser-no-password", "superuser-guessed", "app-wrong", "owner-wrong", "app-empty"],
)
async def test_tcp_logins_need_the_roles_password(
    private_stack: Stack, role: str, password: str | None
) -> None:
    url = private_stack.database.set(username=role, password=password)
    with pytest.raises(
        (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)
    ):
        await asyncpg.connect(asyncpg_dsn(url))


def test_the_clusters_auth_trusts_no_one(private_stack: Stack) -> None:
    hba = (private_stack.layout.postgres_dir / "pg_hba.conf").read_text()
    rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
    assert {rule[-1] if rule[0] == "host" else rule[3] for rule in rules} == {
        "peer",
        "scram-sha-256",
    }
    assert not any("trust" in rule for rule in rules)


def test_every_file_with_a_secret_is_the_owners_alone(private_stack: Stack) -> None:
    """Every password and verifier the stack keeps, looked for in every file under the run
    directory: only in the secrets directory (0700), in files of mode 0600, and in PgBouncer's
    auth file (0600), which holds verifiers, never a password."""
    secrets_dir = private_stack.layout.secrets_dir
    assert stat.S_IMODE(secrets_dir.stat().st_mode) == 0o700
    values = {
        path.name: path.read_text().strip() for path in secrets_dir.iterdir() if path.is_file()
    }
    assert {f"{OWNER}.password", f"{APP}.password", f"{APP}.scram"} <= values.keys()
    passwords = {name: text for name, text in values.items() if name.endswith(".password")}
    holders: dict[Path, set[str]] = {}
    for path in private_stack.layout.root.rglob("*"):
        if (
            not path.is_file()
            or path.is_symlink()
            or private_stack.layout.postgres_dir in path.parents
        ):
            continue
        try:
            content = path.read_text(errors="ignore")
        except OSError:
            continue
        found = {name for name, secret in values.items() if secret and secret in content}
        if found:
            holders[path] = found
    for path, found in holders.items():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, found)
        assert path.parent == secrets_dir or path == private_stack.layout.pgbouncer_dir / (
            "userlist.txt"
        ), (path, found)
    userlist = private_stack.layout.pgbouncer_dir / "userlist.txt"
    assert holders[userlist] == {f"{APP}.scram"}
    assert not any(secret in userlist.read_text() for secret in passwords.values())
    state = private_stack.layout.state_file.read_text()
    assert f"{APP}@" in state
    assert not any(secret in state for secret in passwords.values())


async def test_the_shared_stacks_workers_log_in_as_an_app_role_of_their_own(
    stack: Stack,
) -> None:
    """With DATABASE_URL (a superuser here), `up` made `<database>_app` for the workers."""
    database = stack.database.database
    assert await sessions_by_role(stack.database, "notes") == {f"{database}_app"}


def test_make_migrate_runs_as_the_owner(private_stack: Stack) -> None:
    """`make migrate` on a running stack: its owner's password comes from the secrets, and the
    app role still may not write Alembic's version table."""
    result = private_stack.run("migrate")
    assert "migrated" in result.stdout + result.stderr


def test_another_local_user_cannot_reach_the_clusters_socket(private_stack: Stack) -> None:
    """The socket, where the superuser logs in by peer, is in the data directory (0700)."""
    if os.geteuid() != 0:
        pytest.skip("trying another user's access needs root")
    bindir = subprocess.run(
        [PG_CLUSTER, "bindir"], capture_output=True, text=True, check=True
    ).stdout.strip()
    nobody = pwd.getpwnam("nobody")
    result = subprocess.run(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
         f"{bindir}/psql", "-h", str(private_stack.layout.postgres_dir),
         "-p", str(private_stack.database.port), "-U", "postgres", "-c", "SELECT 1"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Permission denied" in result.stderr, result.stderr
