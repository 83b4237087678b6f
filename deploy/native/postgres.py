"""PostgreSQL: DATABASE_URL when set, else the private cluster in the run dir; its two roles;
migrations.

Every mode has two roles. The owner runs the migrations and owns the schema and every table
in it. The app role, which the workers log in as, may use the schema and select, insert,
update and delete rows in its tables and use their sequences: nothing else (not superuser,
not owner, no CREATE). Default privileges grant the same on whatever table or sequence the
owner creates later, so that a migration's new table is the app's without a grant of its own,
for any app served with MIGRATIONS.

The private cluster's roles are `<database>_owner` and `<database>_app`, with passwords the
stack generates (deploy.native.secrets); its superuser logs in only on the socket, by peer
authentication (deploy/native/pg-cluster). With DATABASE_URL, its role is the owner, and the
app role is APP_DATABASE_URL's, else `<database>_app`, made by the stack when the owner may
create roles.
"""

import asyncio
import re
import subprocess
import sys

import asyncpg
from sqlalchemy.engine import URL, make_url

from deploy.native.processes import fail, log, run_helper
from deploy.native.secrets import password_removed
from deploy.native.state import Stack, StackState
from service.config import ROOT, load_settings
from service.database.urls import asyncpg_dsn, quoted
from service.stack.alembic_run import LOCK_NOT_AVAILABLE

# Only what the app needs: rows, never the schema (one file for every mode).
GRANT_APP_ROLE = ROOT / "deploy" / "postgres" / "grant-app-role.sql"
SCHEMA = "public"


def ensure_database(stack: Stack) -> StackState:
    """Use DATABASE_URL, or start the private cluster; make the roles; return what to
    remember."""
    settings = load_settings()
    if settings.database_url_is_explicit:
        log("database: DATABASE_URL")
        owner = make_url(settings.sqlalchemy_url)
        app = asyncio.run(_app_role_beside(owner, stack, settings.environment))
        return StackState(
            database_url=stack.kept(owner),
            app_url=stack.kept(app) if app else None,
            private_postgres=False,
        )
    run_helper("install-deps", "postgres")
    start_private(stack)
    port = stack.settings.postgres_port
    name = settings.stack_name.replace("-", "_")
    owner_role, app_role = f"{name}_owner", f"{name}_app"
    asyncio.run(_provision_private(stack, name, owner_role, app_role))
    base = f"postgresql+asyncpg://{{}}@127.0.0.1:{port}/{name}"
    return StackState(
        database_url=base.format(owner_role),
        app_url=base.format(app_role),
        private_postgres=True,
    )


async def _provision_private(stack: Stack, database: str, owner: str, app: str) -> None:
    """The private cluster's roles, with the stack's passwords, and its database, owned by
    `owner`; as the superuser, on the socket."""
    secrets = stack.secrets
    socket = {"host": str(stack.layout.postgres_dir), "port": stack.settings.postgres_port}
    admin = await asyncpg.connect(user="postgres", database="postgres", **socket)
    try:
        for role in (owner, app):
            _, verifier = secrets.generated(role)
            await _login_role(admin, role, verifier)
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", database)
        if not exists:
            await admin.execute(f"CREATE DATABASE {quoted(database)} OWNER {quoted(owner)}")
        await admin.execute(f"ALTER DATABASE {quoted(database)} OWNER TO {quoted(owner)}")
    finally:
        await admin.close()
    admin = await asyncpg.connect(user="postgres", database=database, **socket)
    try:
        await _hand_over_to(admin, owner)
        # The cluster is the stack's: no one but these two roles gets in, or creates anything.
        await admin.execute(f"REVOKE ALL ON DATABASE {quoted(database)} FROM PUBLIC")
        await admin.execute(f"REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC")
        await grant(admin, database, owner, app)
    finally:
        await admin.close()


async def _login_role(connection: asyncpg.Connection, role: str, verifier: str) -> None:
    """`role` as a login role with `verifier` as its password and no other attribute."""
    exists = await connection.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    if not exists:
        await connection.execute(f"CREATE ROLE {quoted(role)}")
    # A verifier, not a password: the server keeps it as it is, and never sees the password.
    await connection.execute(
        f"ALTER ROLE {quoted(role)} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
        f"NOREPLICATION NOBYPASSRLS NOINHERIT PASSWORD '{verifier}'"
    )


async def _hand_over_to(connection: asyncpg.Connection, owner: str) -> None:
    """Give `owner` the schema and what an older stack made in it as the superuser."""
    await connection.execute(f"ALTER SCHEMA {SCHEMA} OWNER TO {quoted(owner)}")
    rows = await connection.fetch(
        """
        SELECT c.relname, c.relkind FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
          AND pg_get_userbyid(c.relowner) <> $2
          AND NOT (c.relkind = 'S' AND EXISTS (
              SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
        """,
        SCHEMA,
        owner,
    )
    kinds = {"r": "TABLE", "p": "TABLE", "v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}
    for row in rows:
        relation = f"{SCHEMA}.{quoted(row['relname'])}"
        await connection.execute(
            f"ALTER {kinds[row['relkind']]} {relation} OWNER TO {quoted(owner)}"
        )


def grant_statements(database: str, owner: str, app: str) -> list[str]:
    """deploy/postgres/grant-app-role.sql, its psql variables filled in: what `app` may do in
    `database`, whose schema `owner` owns (the same file Compose's database runs)."""
    names = {"database": database, "owner": owner, "app": app}
    lines = [line for line in GRANT_APP_ROLE.read_text().splitlines() if not line.startswith("--")]
    script = re.sub(r':"(\w+)"', lambda match: quoted(names[match[1]]), "\n".join(lines))
    return [statement.strip() for statement in script.split(";") if statement.strip()]


async def grant(connection: asyncpg.Connection, database: str, owner: str, app: str) -> None:
    """Run `grant_statements` on `connection`, as the owner or a superuser."""
    for statement in grant_statements(database, owner, app):
        await connection.execute(statement)


async def _app_role_beside(owner_url: URL, stack: Stack, environment: str) -> URL | None:
    """With DATABASE_URL: the app role's URL (APP_DATABASE_URL's, or `<database>_app` made
    here), granted what it needs; None when the workers must log in as the owner."""
    database = owner_url.database or "postgres"
    owner_dsn = asyncpg_dsn(owner_url)
    explicit = stack.settings.app_database_url
    connection = await asyncpg.connect(owner_dsn)
    try:
        owner, may_create_roles = await connection.fetchrow(
            "SELECT current_user, rolsuper OR rolcreaterole FROM pg_roles "
            "WHERE rolname = current_user"
        )
        if explicit:
            app_url = make_url(explicit).set(drivername="postgresql+asyncpg")
            app = app_url.username or ""
        elif may_create_roles:
            app = f"{database}_app"
            _, verifier = stack.secrets.generated(app)
            await _login_role(connection, app, verifier)
            app_url = password_removed(owner_url.set(username=app))
        else:
            message = (
                f"DATABASE_URL's role {owner} may not create roles, and APP_DATABASE_URL is not "
                "set: the workers would log in as the owner of the schema. Set APP_DATABASE_URL "
                "to a role with only DML on the app's tables"
            )
            if environment == "production":
                fail(message)
            log(f"warning: {message}")
            return None
        await grant(connection, database, owner, app)
    finally:
        await connection.close()
    return app_url


def start_private(stack: Stack) -> None:
    """Start (initdb first if needed) the private cluster; durable, as PostgreSQL ships."""
    run_helper("pg-cluster", "start", stack.layout.postgres_dir, str(stack.settings.postgres_port))


def stop_private(stack: Stack) -> None:
    """Stop the private cluster if it runs (fast shutdown: nothing committed is lost)."""
    run_helper("pg-cluster", "stop", stack.layout.postgres_dir)


def migrate(env: dict[str, str]) -> None:
    """The app's migrations to head (MIGRATIONS), as `make migrate` runs them: under the
    stack's migration lock, each statement under MIGRATION_LOCK_TIMEOUT and tried again
    (`service.stack.migrate`). The runner's own lines (revisions, attempts) are logged as it
    says them: a migration waiting on its locks shows its attempts while it waits."""
    output, said = [], []
    with subprocess.Popen(
        [sys.executable, "-m", "service.stack.migrate"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,  # one stream, in the order it was written
        text=True,
    ) as process:
        assert process.stdout is not None  # noqa: S101 (stdout=PIPE above)
        for line in process.stdout:
            output.append(line)
            if line.startswith("migrations: "):
                said.append(line.rstrip("\n"))
                log(said[-1])
    if process.returncode == LOCK_NOT_AVAILABLE:
        # The last attempt's statement and the verdict; every line was logged as it came.
        fail("\n".join(said[-2:]))
    if process.returncode != 0:
        fail(f"migrations failed:\n{''.join(output)}")
