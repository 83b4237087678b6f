"""The service image, built by `make image` with the real engine and run for real.

The engine is started (as root) when none runs, and stopped after the tier if it was started
here. The containers share the host's network, so that they reach the tests' PostgreSQL on
loopback and serve on a free loopback port. Each image is run as Kubernetes runs it: its
non-root user, a read-only root filesystem, no capabilities, a tmpfs for /tmp.
"""

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import URL

from deploy.native.processes import free_port
from service.stack.heads import alembic_heads
from tests.containers.engine import docker
from tests.containers.roles import check_the_two_roles
from tests.metrics import parse, value
from tests.postgres import PG_CLUSTER, ROOT, admin_execute, fresh_database, run_sync

KUBERNETES_DOC = ROOT / "docs" / "kubernetes.md"
HARDENED = ["--read-only", "--cap-drop", "ALL", "--tmpfs", "/tmp:rw,mode=1777"]  # noqa: S108
INVENTORY_ENV = {
    "APP": "inventory.main:app",
    "APP_PATH": "examples/inventory",
    "MIGRATIONS": "examples/inventory/alembic.ini",
}


def build(tag: str, *argv: str) -> str:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "deploy.image", "--tag", tag, *argv],
        cwd=ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    size = int(docker("image", "inspect", "--format", "{{.Size}}", tag).stdout)
    print(f"\n{tag}: built in {time.monotonic() - started:.1f}s, {size / 1e6:.0f} MB")
    return tag


@pytest.fixture(scope="session")
def notes_image(engine: None) -> str:
    return build("notes-stack-app:test")


@pytest.fixture(scope="session")
def inventory_image(engine: None) -> str:
    return build("inventory-app:test", "--app-path", "examples/inventory")


def env_args(env: dict[str, str]) -> list[str]:
    return [arg for name, value in env.items() for arg in ("-e", f"{name}={value}")]


def run(image: str, env: dict[str, str], *command: str) -> subprocess.CompletedProcess[str]:
    """A one-shot container of `image`, hardened, on the host's network."""
    return docker(
        "run", "--rm", "--network", "host", *HARDENED, *env_args(env), image, *command,
        check=False,
    )  # fmt: skip


@dataclass
class Served:
    """An app container serving on the host's loopback."""

    name: str
    url: str
    started_in: float

    def logs(self) -> list[dict[str, object]]:
        lines = docker("logs", self.name).stdout.splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


@contextmanager
def serve(image: str, env: dict[str, str]) -> Iterator[Served]:
    """Start the app container, wait for /readyz, yield it, then `docker stop` it."""
    port = free_port()
    name = f"test-{uuid.uuid4().hex[:8]}"
    env = {**env, "GUNICORN_BIND": f"127.0.0.1:{port}", "WEB_CONCURRENCY": "2"}
    started = time.monotonic()
    docker("run", "--detach", "--name", name, "--network", "host", *HARDENED, *env_args(env), image)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            state = docker("inspect", "--format", "{{.State.Status}}", name).stdout.strip()
            assert state == "running", docker("logs", name, check=False).stderr
            assert time.monotonic() - started < 60, "the app did not get ready in 60 s"
            time.sleep(0.2)
        served = Served(name, url, time.monotonic() - started)
        print(f"\n{image}: ready in {served.started_in:.1f}s")
        yield served
        stopped = docker("stop", "--time", "35", name)
        assert stopped.returncode == 0
        code = docker("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip()
        assert code == "0", docker("logs", name, check=False).stderr
    finally:
        docker("rm", "--force", name, check=False)


def database_env(url: URL) -> dict[str, str]:
    return {"DATABASE_URL": url.render_as_string(hide_password=False)}


async def schema_revision(url: URL) -> str:
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        return str(await connection.fetchval("SELECT version_num FROM alembic_version"))
    finally:
        await connection.close()


@pytest.fixture
def notes_database(pg_server: URL) -> Iterator[URL]:
    with fresh_database(pg_server) as url:
        yield url


def test_it_runs_as_its_user_with_a_read_only_root_and_no_capabilities(notes_image: str) -> None:
    probe = (
        "import os, pathlib\n"
        "print(os.getuid(), os.getgid())\n"
        "status = pathlib.Path('/proc/self/status').read_text().splitlines()\n"
        "print([line.split()[1] for line in status if line.startswith('CapEff')][0])\n"
        "try:\n"
        "    pathlib.Path('/app/written').write_text('x')\n"
        "    print('written')\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
    )
    result = run(notes_image, {}, "python", "-c", probe)
    assert result.returncode == 0, result.stderr
    user, capabilities, write = result.stdout.splitlines()
    assert user == "10001 10001"
    assert int(capabilities, 16) == 0
    assert write == "refused 30"  # EROFS


def test_the_migration_command_brings_the_schema_to_head(
    notes_image: str, notes_database: URL
) -> None:
    """Compose's `migrate` and the Kubernetes Job run `python -m service.stack.migrate`
    (both with the two roles: below, and tests/containers/test_compose.py)."""
    result = run(notes_image, database_env(notes_database), "python", "-m", "service.stack.migrate")
    assert result.returncode == 0, result.stdout + result.stderr
    assert run_sync(schema_revision(notes_database)) in alembic_heads()
    again = run(notes_image, database_env(notes_database), "python", "-m", "service.stack.migrate")
    assert again.returncode == 0, again.stderr


def operator_steps(database: str, app: str, app_password: str) -> str:
    """docs/kubernetes.md's shell block that makes the app role, as written, for this
    database (whose owner has its name, as `notes` owns `notes` there) and app role."""
    text = KUBERNETES_DOC.read_text()
    section = text[text.index("## The roles and Secrets to create") :]
    block = re.search(r"```\n(.*?)```", section, re.DOTALL)
    assert block, "docs/kubernetes.md: no shell block under 'The roles and Secrets to create'"
    script = block.group(1).replace("APP-PASSWORD", app_password)
    script = re.sub(r"\bnotes_app\b", app, script)
    return re.sub(r"\bnotes\b", database, script)


@pytest.fixture
def kubernetes_database(pg_server: URL) -> Iterator[tuple[URL, URL]]:
    """A database as docs/kubernetes.md has the operator make it: an owner role that is no
    superuser owning it, then the documented psql steps run by a superuser (the app role,
    PUBLIC's rights revoked, grant-app-role.sql). The owner's URL and the app role's."""
    with fresh_database(pg_server, prefix="k8s") as url:
        name = str(url.database)
        app, owner_password, app_password = f"{name}_app", uuid.uuid4().hex, uuid.uuid4().hex
        run_sync(
            admin_execute(
                url,
                f'CREATE ROLE "{name}" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE '
                f"PASSWORD '{owner_password}'",
                f'ALTER DATABASE "{name}" OWNER TO "{name}"',
            )
        )
        try:
            bindir = subprocess.run(
                [PG_CLUSTER, "bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            env = {
                "PATH": f"{bindir}:{os.environ['PATH']}",
                "PGHOST": url.host or "127.0.0.1",
                "PGPORT": str(url.port or 5432),
                "PGUSER": url.username or "postgres",
                **({"PGPASSWORD": url.password} if url.password else {}),
            }
            steps = subprocess.run(
                ["/bin/bash", "-euo", "pipefail", "-c", operator_steps(name, app, app_password)],
                cwd=ROOT, env=env, capture_output=True, text=True, check=False,
            )  # fmt: skip
            assert steps.returncode == 0, steps.stdout + steps.stderr
            owner_url = url.set(username=name, password=owner_password)
            yield owner_url, url.set(username=app, password=app_password)
        finally:
            run_sync(admin_execute(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            run_sync(admin_execute(url, f'DROP ROLE IF EXISTS "{app}"', f'DROP ROLE "{name}"'))


def test_the_migration_command_as_the_owner_leaves_the_app_role_only_rows(
    notes_image: str, kubernetes_database: tuple[URL, URL]
) -> None:
    """The Kubernetes Job's command from the image, as the owner, on a database the operator
    made as docs/kubernetes.md says: at head, every table the owner's, the app role limited to
    rows; then the image served as the app role is ready and writes."""
    owner, app = kubernetes_database
    result = run(notes_image, database_env(owner), "python", "-m", "service.stack.migrate")
    assert result.returncode == 0, result.stdout + result.stderr
    revision = run_sync(check_the_two_roles(owner, app))
    print(f"\nmigrated as {owner.username} to {revision}; {app.username} may only touch rows")
    with serve(notes_image, database_env(app)) as served:
        created = httpx.post(f"{served.url}/api/v1/notes", json={"text": "as the app role"})
        assert created.status_code == 201, created.text


def test_the_notes_container_serves_the_api_metrics_and_json_logs(
    notes_image: str, notes_database: URL
) -> None:
    env = database_env(notes_database)
    assert run(notes_image, env, "python", "-m", "service.stack.migrate").returncode == 0
    with serve(notes_image, env) as served:
        request_id = f"image-{uuid.uuid4().hex}"
        created = httpx.post(
            f"{served.url}/api/v1/notes",
            json={"text": "from the image"},
            headers={"X-Request-ID": request_id},
        )
        assert created.status_code == 201, created.text
        note = httpx.get(f"{served.url}/api/v1/notes/{created.json()['id']}")
        assert note.json()["text"] == "from the image"
        samples = parse(httpx.get(f"{served.url}/metrics").text)
        labels = {"method": "POST", "route": "/api/v1/notes", "status": "201"}
        assert value(samples, "http_requests_total", **labels) == 1
        health = ""
        deadline = time.monotonic() + 30  # HEALTHCHECK every 10 s
        while health != "healthy" and time.monotonic() < deadline:
            time.sleep(1)
            inspected = docker("inspect", "--format", "{{.State.Health.Status}}", served.name)
            health = inspected.stdout.strip()
        assert health == "healthy"
        access = [line for line in served.logs() if line.get("request_id") == request_id]
        assert [line["route"] for line in access] == ["/api/v1/notes"]


def test_another_projects_image_has_its_requirements_and_serves_it(
    inventory_image: str, pg_server: URL
) -> None:
    """`make image APP_PATH=examples/inventory`: the project at the same relative path, its
    email-validator installed beside the stack's dependencies, its own migrations."""
    with fresh_database(pg_server, prefix="inventory_test") as url:
        env = {**database_env(url), **INVENTORY_ENV}
        migrated = run(inventory_image, env, "python", "-m", "service.stack.migrate")
        assert migrated.returncode == 0, migrated.stdout + migrated.stderr
        assert run_sync(schema_revision(url)) == "0001_items"
        with serve(inventory_image, env) as served:
            body = {"name": "boxed", "owner_email": "owner@example.com"}
            created = httpx.post(f"{served.url}/api/v1/items/", json=body)
            assert created.status_code == 201, created.text
            bad = httpx.post(f"{served.url}/api/v1/items/", json={**body, "owner_email": "x"})
            assert bad.status_code == 422
            samples = parse(httpx.get(f"{served.url}/metrics").text)
            labels = {"method": "POST", "route": "/api/v1/items/"}
            assert value(samples, "http_requests_total", status="201", **labels) == 1
            assert value(samples, "http_requests_total", status="422", **labels) == 1
            loggers = {line["logger"] for line in served.logs()}
            assert "inventory.items" in loggers
